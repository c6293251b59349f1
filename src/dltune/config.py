"""The experiment file: TOML loading, --set overrides and the resolved experiment as TOML; the sections themselves
(pydantic models, every default) are in `dltune.sections` and re-exported here.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError

from dltune.config_errors import describe
from dltune.errors import ConfigError
from dltune import sections
from dltune.sections import (AblationConfig, BatchConfig, CodeConfig, CompressConfig, DataConfig, DistillConfig,
                             ExperimentConfig, Int8Config, LossConfig, MagnitudeConfig, MetricsConfig, ModelConfig,
                             OptimConfig, ParallelConfig, PruneConfig, RegularizationConfig, ScheduleConfig,
                             SearchConfig, TrackingConfig, TrainConfig, TransferConfig)

__all__ = [*sections.__all__, "load_config", "override", "parse_overrides", "to_toml"]  # the sections, re-exported

_PATH_KEYS = ("dir", "path", "images", "labels")  # data keys resolved against the file's folder


def load_config(
    source: str | Path | Mapping[str, Any] | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
) -> ExperimentConfig:
    """An experiment from a TOML file (or a dict, or defaults), with overrides applied.

    Relative data paths in a file are taken relative to the file's folder; overrides
    are "section.key=value" strings (values parsed as TOML literals) or a dict of
    dotted paths to values.
    """
    if source is None:
        raw: dict[str, Any] = {}
    elif isinstance(source, Mapping):
        raw = _deep_copy(source)
    else:
        raw = _read_toml(Path(source))
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    for dotted, value in overrides.items():
        _set_path(raw, dotted, value)
    code = raw.get("code") or {}  # not a table: validation says so
    if isinstance(source, (str, Path)) and isinstance(code, dict) and not code.get("paths") and _names_code(raw):
        _set_path(raw, "code.paths", [str(Path(source).resolve().parent)])  # import paths: the file's folder first
    return _validate(raw)


def override(config: ExperimentConfig, overrides: Mapping[str, Any]) -> ExperimentConfig:
    """A copy of `config` with dotted-path overrides applied and validated again."""
    raw = config.model_dump()
    for dotted, value in overrides.items():
        _set_path(raw, dotted, value)
    return _validate(raw)


def to_toml(config: ExperimentConfig) -> str:
    """The resolved experiment as a TOML document. Keys left at None are omitted, and so are the [metrics],
    [code], [tracking], [ablation], [search], [compress] and [transfer] sections when unused."""
    unused = {name for name in ("metrics", "code", "tracking", "ablation", "search", "compress", "transfer")
              if getattr(config, name) == type(getattr(config, name))()}
    return tomli_w.dumps(config.model_dump(mode="json", exclude_none=True, exclude=unused))


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """{"optim.lr": 0.003} from ["optim.lr=3e-3"]; a value that is not TOML is a string."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or "." not in key:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. optim.lr=3e-3")
        try:
            parsed[key] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            parsed[key] = text.strip()  # bare words: --set data.name=digits
    return parsed


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such experiment file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not an experiment file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text ({e.reason} at byte {e.start})") from None
    base = path.resolve().parent
    data = raw.get("data")
    if isinstance(data, dict):
        for key in _PATH_KEYS:
            value = data.get(key)
            if isinstance(value, str) and not Path(value).expanduser().is_absolute():
                data[key] = str(base / value)
    loss = raw.get("loss")
    if isinstance(loss, dict) and isinstance(loss.get("distill_from"), str):
        teacher = Path(loss["distill_from"]).expanduser()
        loss["distill_from"] = str(teacher if teacher.is_absolute() else base / teacher)
    transfer = raw.get("transfer")
    if isinstance(transfer, dict) and isinstance(transfer.get("from"), str):
        source = Path(transfer["from"]).expanduser()
        transfer["from"] = str(source if source.is_absolute() else base / source)
    code = raw.get("code")
    if isinstance(code, dict) and isinstance(code.get("paths"), list):
        code["paths"] = [str(base / p) if isinstance(p, str) and not Path(p).expanduser().is_absolute() else p
                         for p in code["paths"]]
    return raw


_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def _names_code(raw: Any) -> bool:
    """Whether any value of the experiment (a name, a variant, a choice of the search space) is an import path."""
    if isinstance(raw, Mapping):
        return any(_names_code(v) for v in raw.values())
    if isinstance(raw, (list, tuple)):
        return any(_names_code(v) for v in raw)
    return isinstance(raw, str) and bool(_IMPORT_PATH.match(raw))


def _set_path(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])}: is a value, not a section; cannot set {dotted}")
        node = child
    node[parts[-1]] = value


# keys that were renamed: old dotted path -> (new path, why), so that an old file gets told what the key is now
RENAMED = {
    "regularization.weight_decay": ("regularization.decoupled_weight_decay",
                                    "one name, one meaning: optim.weight_decay is the optimizer's own (coupled) decay"),
}


def _validate(raw: dict[str, Any]) -> ExperimentConfig:
    renamed = [f"  {old}: renamed to {new} ({why})" for old, (new, why) in RENAMED.items()
               if isinstance(raw.get(old.split(".")[0]), Mapping) and old.split(".")[1] in raw[old.split(".")[0]]]
    if renamed:
        raise ConfigError("invalid experiment:\n" + "\n".join(renamed))
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        lines: dict[str, list[str]] = {}  # path -> messages (a union field fails once per alternative)
        for err in e.errors():
            path, message = describe(err, ExperimentConfig)
            lines.setdefault(path, []).append(message)
        text = "\n".join(f"  {path}: {'; or '.join(messages)}" for path, messages in lines.items())
        raise ConfigError("invalid experiment:\n" + text) from None


def _deep_copy(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in mapping.items()}
