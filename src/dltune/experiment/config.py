"""The experiment file: TOML loading, --set overrides and the resolved experiment as TOML; the sections themselves
(pydantic models, every default) are in `dltune.experiment.sections`; ExperimentConfig, the whole file's, is
re-exported here.
"""

from __future__ import annotations

import functools
import os
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import BaseModel, ValidationError

from dltune.errors import ConfigError
from dltune.experiment import sections
from dltune.experiment.config_errors import describe
from dltune.experiment.sections import ExperimentConfig

__all__ = ["LATER_KEYS", "ExperimentConfig", "later_defaults", "load_config", "override", "parse_overrides",
           "path_keys", "resolve_path", "to_toml"]


def load_config(
    source: str | Path | Mapping[str, Any] | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
) -> ExperimentConfig:
    """An experiment from a TOML file (or a dict, or defaults), with overrides applied.

    A relative path (path_keys) is read relative to where it was written and made absolute: in the file (its own
    section, a variant, a search space), relative to the file's folder; in "section.key=value" strings (--set,
    values parsed as TOML literals), relative to the working folder. A dict (of the experiment, or of dotted paths
    to override values) is taken as it is.
    """
    if source is None:
        raw: dict[str, Any] = {}
    elif isinstance(source, Mapping):
        raw = _deep_copy(source)
    else:
        raw = _read_toml(Path(source))
    if not isinstance(overrides, Mapping):  # --set: a relative path is read relative to the working folder
        overrides = {k: resolve_path(k, v, Path.cwd()) for k, v in parse_overrides(overrides).items()}
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


# keys added after run folders, searches and ablations were first stored (tests/fixtures/format-2026-12), each with
# the default that trains as dltune did before it: left at that default, a key is left out of config.toml and of the
# fingerprints that a search and an ablation keep, so that what was stored before the key existed still resumes and
# continues (an experiment that sets it is another experiment, and says so)
LATER_KEYS: dict[tuple[str, str], Any] = {("train", "precision"): "fp32", ("model", "channels_last"): False,
                                          ("search", "enqueue"): (), ("train", "changes"): (),
                                          ("search", "population"): 8, ("search", "interval"): 2,
                                          ("search", "quantile"): 0.25, ("search", "resample_probability"): 0.25,
                                          ("search", "perturb"): (0.8, 1.2)}


def later_defaults(config: ExperimentConfig) -> dict[str, set[str]]:
    """The LATER_KEYS that `config` leaves at their defaults, by section: what pydantic's model_dump(exclude=...)
    leaves out of a stored form of the experiment."""
    unset: dict[str, set[str]] = {}
    for (section, key), default in LATER_KEYS.items():
        if getattr(getattr(config, section), key) == default:
            unset.setdefault(section, set()).add(key)
    return unset


def to_toml(config: ExperimentConfig) -> str:
    """The resolved experiment as a TOML document. Keys left at None are omitted, and so are the [metrics],
    [code], [tracking], [ablation], [search], [compress] and [transfer] sections when unused, and the LATER_KEYS
    left at their defaults."""
    unused = {name for name in ("metrics", "code", "tracking", "ablation", "search", "compress", "transfer")
              if getattr(config, name) == type(getattr(config, name))()}
    exclude: dict[str, Any] = {**later_defaults(config), **dict.fromkeys(unused, True)}
    return tomli_w.dumps(config.model_dump(mode="json", exclude_none=True, exclude=exclude))


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
    _resolve_paths(raw, path.resolve().parent)
    return raw


@functools.cache
def path_keys() -> dict[str, str]:
    """Every setting that names a file or a folder, by dotted path: its kind, "path", "paths" (several) or "uri"
    (sections.Local marks them)."""

    def walk(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, str]]:
        for name, field in model.model_fields.items():
            key = f"{prefix}{field.alias or name}"
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                yield from walk(field.annotation, f"{key}.")
            for mark in field.metadata:
                if isinstance(mark, sections.Local):
                    yield key, mark.kind

    return dict(walk(ExperimentConfig, ""))


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def resolve_path(key: str, value: Any, base: Path) -> Any:
    """`value` of the setting `key` with a relative path in it made absolute against `base`; any other value (a
    setting that names no path, an absolute path, a URI of a server, a value of the wrong type that validation
    will name) as it is. For a "uri": a plain path, file:PATH and sqlite:///PATH (three slashes: relative)."""
    kind = path_keys().get(key)
    if kind == "paths":
        return [_absolute(v, base) if isinstance(v, str) and v else v for v in value] \
            if isinstance(value, (list, tuple)) else value
    if kind is None or not isinstance(value, str) or not value:
        return value
    if kind == "uri" and _SCHEME.match(value):
        for prefix in ("sqlite:///", "file://", "file:"):
            rest = value[len(prefix):]
            if value.startswith(prefix) and rest and not rest.startswith("/"):
                return ("file://" if prefix.startswith("file") else prefix) + _absolute(rest, base)
        return value  # a server's URI, or an absolute file's
    return _absolute(value, base)


def _absolute(path: str, base: Path) -> str:
    """`path` made absolute against `base`, its ".." parts taken away ("examples/../runs" is "runs")."""
    expanded = Path(path).expanduser()
    return os.path.normpath(expanded if expanded.is_absolute() else base / expanded)


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make the relative paths of a file's experiment absolute against its folder (`base`), in place: in the
    sections, in the overrides of the ablation's variants and of compress (prune.finetune, distill.train), and in
    the choices of the search space."""
    for key in path_keys():
        section, _, name = key.partition(".")
        table = raw.get(section)
        if isinstance(table, dict) and name in table:
            table[name] = resolve_path(key, table[name], base)
    variants = (raw.get("ablation") or {}).get("variants") if isinstance(raw.get("ablation"), dict) else None
    compress = raw["compress"] if isinstance(raw.get("compress"), dict) else {}
    overrides = [*(variants.values() if isinstance(variants, dict) else []),
                 *((compress.get(k) or {}).get(v) for k, v in (("prune", "finetune"), ("distill", "train"))
                   if isinstance(compress.get(k), dict))]
    for changes in overrides:
        if isinstance(changes, dict):
            for key, value in changes.items():
                changes[key] = resolve_path(key, value, base)
    space = raw.get("search", {}).get("space") if isinstance(raw.get("search"), dict) else None
    if isinstance(space, dict):
        _resolve_space(space, "", base)


def _resolve_space(space: dict[str, Any], prefix: str, base: Path) -> None:
    """The choices of a search space's path-valued entries, as "transfer.from" = [...] or [search.space.transfer]."""
    for name, spec in space.items():
        key = f"{prefix}{name}"
        if key not in path_keys():
            if isinstance(spec, dict):
                _resolve_space(spec, f"{key}.", base)
            continue
        if isinstance(spec, list):
            space[name] = [resolve_path(key, choice, base) for choice in spec]
        elif isinstance(spec, dict) and isinstance(spec.get("choices"), list):
            spec["choices"] = [resolve_path(key, choice, base) for choice in spec["choices"]]


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
