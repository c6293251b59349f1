"""The experiment file: frozen pydantic models of every section, TOML loading and --set overrides.

Defaults live here and nowhere else. Names of registry entries (dataset, model, optimizer,
schedule, loss) are plain strings here; `dltune.train.check` resolves them against the registries.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from dltune.errors import ConfigError

__all__ = [
    "BatchConfig",
    "DataConfig",
    "ExperimentConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "ParallelConfig",
    "RegularizationConfig",
    "ScheduleConfig",
    "TrainConfig",
    "load_config",
    "override",
    "parse_overrides",
    "to_toml",
]

PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class DataConfig(_Section):
    """Where the examples come from and how they are split and scaled."""

    name: str = "mnist-5k"
    dir: str | None = None  # data directory of mnist / fashion-mnist; default $DLTUNE_DATA or ~/.cache/dltune
    download: bool = True  # fetch missing IDX files from the public mirrors (checked by MD5)
    mirrors: tuple[str, ...] | None = Field(None, strict=False)  # base URLs tried in order; None: built-in list
    path: str | None = None  # csv or npz file
    images: str | None = None  # idx: image file (gzip or raw)
    labels: str | None = None  # idx: label file (gzip or raw)
    target: str | None = None  # csv: name of the target column
    x_key: str = "x"  # npz: array of inputs
    y_key: str = "y"  # npz: array of targets
    task: Literal["auto", "classification", "binary", "regression"] = "auto"
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2  # of all examples, where no test split ships
    val_fraction: Fraction = 0.1  # of the examples left after the test split (0: no validation split)
    limit: PositiveInt | None = None  # keep a stratified subset of this many examples (quick runs)
    normalize: Literal["standard", "none"] = "standard"  # z-score with training-split statistics
    seed: int = 0  # seed of the split and subset; kept apart from train.seed so seeds share one split


class ModelConfig(_Section):
    """The network; each key applies to the models named in its comment."""

    name: str = "mlp"
    hidden: tuple[PositiveInt, ...] = Field((500,), strict=False)  # mlp: widths of hidden layers
    activation: Literal["relu", "leaky_relu", "gelu", "silu", "elu", "tanh", "sigmoid"] = "relu"
    dropout: Fraction = 0.0  # mlp, cnn head, rnn between layers: drop probability
    channels: tuple[PositiveInt, ...] = Field((32, 64), strict=False)  # cnn: output channels per conv block
    kernel_size: PositiveInt = 3  # cnn: square kernel, padded to keep the size
    pooling: Literal["max", "avg", "none"] = "max"  # cnn: 2x2 pooling after each conv block
    head: tuple[PositiveInt, ...] = Field((128,), strict=False)  # cnn: dense layers before the output
    hidden_size: PositiveInt = 128  # rnn / lstm / gru: units per direction
    layers: PositiveInt = 1  # rnn / lstm / gru: stacked recurrent layers
    bidirectional: bool = False  # rnn / lstm / gru


class OptimConfig(_Section):
    """The optimizer (torch.optim) and its settings."""

    name: str = "adam"  # sgd | adam | adamw | rmsprop
    lr: Annotated[float, Field(gt=0.0)] = 1e-3  # per step, for the batch size in [batch]
    momentum: Fraction = 0.0  # sgd, rmsprop
    nesterov: bool = False  # sgd; needs momentum > 0
    betas: tuple[Fraction, Fraction] = Field((0.9, 0.999), strict=False)  # adam, adamw
    alpha: Fraction = 0.99  # rmsprop: smoothing of the squared gradient
    eps: Annotated[float, Field(gt=0.0)] = 1e-8
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0  # torch's own: L2 in the gradient (decoupled for adamw)

    @field_validator("nesterov")
    @classmethod
    def _nesterov_needs_momentum(cls, nesterov: bool, info: ValidationInfo) -> bool:
        if nesterov and info.data.get("momentum") == 0.0:
            raise ValueError("nesterov = true needs momentum > 0")
        return nesterov


class ScheduleConfig(_Section):
    """The learning-rate schedule."""

    name: str = "constant"


class LossConfig(_Section):
    """The training loss; "auto" is cross_entropy for classification and mse for regression."""

    name: str = "auto"


class BatchConfig(_Section):
    """How many examples each step sees."""

    size: PositiveInt = 100  # examples per optimizer step
    eval_size: PositiveInt = 1024  # examples per forward pass when evaluating (no effect on results)


class RegularizationConfig(_Section):
    """Penalties added to the loss (weights only: biases are not penalized)."""

    l1: Annotated[float, Field(ge=0.0)] = 0.0  # λ of λ·Σ|w|
    l2: Annotated[float, Field(ge=0.0)] = 0.0  # λ of λ·Σw²


class ParallelConfig(_Section):
    """CPU threads and data-loader processes."""

    threads: PositiveInt | None = None  # torch intra-op threads; None: torch's default (one per core)
    workers: Annotated[int, Field(ge=0)] = 0  # DataLoader worker processes (user Datasets only)


class TrainConfig(_Section):
    """Length, seed and device of the run."""

    epochs: PositiveInt = 10
    seed: int = 1  # initial weights, batch order, dropout
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available
    deterministic: bool = True  # torch.use_deterministic_algorithms: same seed, same history


class ExperimentConfig(_Section):
    """One experiment: every section of the experiment file."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    loss: LossConfig = LossConfig()
    batch: BatchConfig = BatchConfig()
    regularization: RegularizationConfig = RegularizationConfig()
    parallel: ParallelConfig = ParallelConfig()
    train: TrainConfig = TrainConfig()


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
    return _validate(raw)


def override(config: ExperimentConfig, overrides: Mapping[str, Any]) -> ExperimentConfig:
    """A copy of `config` with dotted-path overrides applied and validated again."""
    raw = config.model_dump()
    for dotted, value in overrides.items():
        _set_path(raw, dotted, value)
    return _validate(raw)


def to_toml(config: ExperimentConfig) -> str:
    """The resolved experiment as a TOML document (keys left at None are omitted)."""
    return tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))


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
    data = raw.get("data")
    if isinstance(data, dict):
        base = path.resolve().parent
        for key in _PATH_KEYS:
            value = data.get(key)
            if isinstance(value, str) and not Path(value).expanduser().is_absolute():
                data[key] = str(base / value)
    return raw


def _set_path(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])}: is a value, not a section; cannot set {dotted}")
        node = child
    node[parts[-1]] = value


def _validate(raw: dict[str, Any]) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError("invalid experiment:\n" + "\n".join(_describe(err) for err in e.errors())) from None


def _describe(err: Mapping[str, Any]) -> str:
    loc = err["loc"]
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        return f"  {path}: unknown key; allowed: {', '.join(allowed)}"
    msg = err["msg"].removeprefix("Value error, ")
    shown = err.get("input")
    got = "" if isinstance(shown, dict) or err["type"] == "value_error" else f" (got {shown!r})"
    return f"  {path or '(top level)'}: {msg}{got}"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = ExperimentConfig
    for part in loc:
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _deep_copy(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in mapping.items()}
