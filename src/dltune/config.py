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
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from dltune.errors import ConfigError

__all__ = [
    "AblationConfig",
    "BatchConfig",
    "DataConfig",
    "ExperimentConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "ParallelConfig",
    "RegularizationConfig",
    "ScheduleConfig",
    "SearchConfig",
    "TrainConfig",
    "load_config",
    "override",
    "parse_overrides",
    "to_toml",
]

PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


def _increasing(epochs: tuple[int, ...]) -> tuple[int, ...]:
    if any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise ValueError(f"must be increasing epochs, got {list(epochs)}")
    return epochs


IncreasingEpochs = Annotated[tuple[PositiveInt, ...], Field(strict=False), AfterValidator(_increasing)]


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
    """The learning-rate schedule (torch.optim.lr_scheduler); lr is optim.lr at the start (after any warmup).

    Counts in epochs; schedules defined per step (cosine, linear, polynomial, onecycle) step after every
    optimizer step, the others after every epoch.
    """

    name: str = "constant"  # constant | step | multistep | exponential | cosine | linear | polynomial | onecycle | plateau
    gamma: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1  # step, multistep, exponential, plateau: lr factor per decay
    step_size: PositiveInt = 10  # step: epochs between decays (lr · gamma^(epoch // step_size))
    milestones: IncreasingEpochs = ()  # multistep: epochs at which lr decays
    min_lr: Annotated[float, Field(ge=0.0)] = 0.0  # cosine: the lr at the bottom of the cosine
    restarts: bool = False  # cosine: warm restarts (SGDR) every `cycle` epochs, cycles growing by `cycle_mult`
    cycle: PositiveInt = 1  # cosine with restarts: epochs of the first cycle
    cycle_mult: PositiveInt = 1  # cosine with restarts: growth of each next cycle
    end_factor: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0  # linear: final lr = lr · end_factor
    power: Annotated[float, Field(gt=0.0)] = 2.0  # polynomial: lr · (1 - t/T)^power
    pct_start: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.3  # onecycle: share of steps rising to lr (the peak)
    div_factor: Annotated[float, Field(ge=1.0)] = 25.0  # onecycle: starting lr = lr / div_factor
    final_div_factor: Annotated[float, Field(ge=1.0)] = 1e4  # onecycle: final lr = starting lr / final_div_factor
    patience: Annotated[int, Field(ge=0)] = 2  # plateau: epochs without val.loss improvement before a decay
    threshold: Annotated[float, Field(ge=0.0)] = 1e-4  # plateau: relative improvement that counts
    warmup_epochs: Annotated[int, Field(ge=0)] = 0  # linear warmup in front of any schedule
    warmup_start: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1  # warmup starts at lr · warmup_start



class LossConfig(_Section):
    """The training loss; "auto" is cross_entropy for classification and mse for regression."""

    name: str = "auto"  # auto | cross_entropy | bce | focal | mse | mae | huber
    # cross_entropy, focal: a weight per class; balanced: n / (k · count of the class) on the training split
    class_weights: Literal["none", "balanced"] | Annotated[tuple[Annotated[float, Field(gt=0.0)], ...],
                                                           Field(strict=False)] = "none"
    label_smoothing: Fraction = 0.0  # cross_entropy
    pos_weight: Annotated[float, Field(gt=0.0)] | None = None  # bce: weight of positive examples
    gamma: Annotated[float, Field(ge=0.0)] = 2.0  # focal: (1 - p_t)^gamma down-weights easy examples
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None  # focal, binary: weight of the positive class
    huber_delta: Annotated[float, Field(gt=0.0)] = 1.0  # huber: where the loss turns from squared to linear
    threshold: Literal["argmax", "f1", "balanced_accuracy", "youden"] = "argmax"  # binary: decision rule, chosen on val


class BatchConfig(_Section):
    """How many examples each step sees, and how that grows."""

    size: PositiveInt = 100  # examples per forward pass (and per optimizer step without accumulation)
    policy: str = "fixed"  # fixed | grow: size × factor at each epoch of grow_at (Smith et al. 2017)
    grow_at: IncreasingEpochs = ()  # grow: epochs (1-based) where the batch grows
    factor: Annotated[float, Field(gt=1.0)] = 2.0  # grow: multiplier at each growth
    lr_coupling: Literal["none", "linear", "sqrt"] = "none"  # grow: lr × factor (linear) or × √factor per growth
    accumulate: PositiveInt = 1  # batches per optimizer step; the step uses the mean gradient of all their examples
    eval_size: PositiveInt = 1024  # examples per forward pass when evaluating (no effect on results)


class RegularizationConfig(_Section):
    """Penalties, noise and stopping rules against overfitting; penalties apply to weights only."""

    l1: Annotated[float, Field(ge=0.0)] = 0.0  # λ of λ·Σ|w| added to the loss
    l2: Annotated[float, Field(ge=0.0)] = 0.0  # λ of λ·Σw² added to the loss
    penalize_all: bool = False  # also penalize biases and normalization parameters (1-d tensors)
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0  # decoupled (AdamW style): w ← w − lr·weight_decay·w per step
    dropconnect: Fraction = 0.0  # drop probability of each weight of hidden linear layers while training
    augment: tuple[Literal["shift", "rotate", "noise"], ...] = Field((), strict=False)  # image batches only
    shift_pixels: Annotated[float, Field(ge=0.0)] = 2.0  # augment shift: at most this many pixels each way
    rotate_degrees: Annotated[float, Field(ge=0.0, le=180.0)] = 10.0  # augment rotate: at most this many degrees
    noise_std: Annotated[float, Field(ge=0.0)] = 0.1  # augment noise: Gaussian, in normalized units
    early_stopping: Annotated[int, Field(ge=1)] | None = None  # patience: epochs without val.loss improvement
    min_delta: Annotated[float, Field(ge=0.0)] = 0.0  # early stopping: improvement smaller than this does not count
    restore_best: bool = True  # early stopping: end with the weights of the best epoch
    clip_norm: Annotated[float, Field(gt=0.0)] | None = None  # clip the global gradient L2 norm to this
    clip_value: Annotated[float, Field(gt=0.0)] | None = None  # clip each gradient element to ±this


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


class AblationConfig(_Section):
    """`dltune ablate`: the baseline (the rest of the file) against named variants, over seeds."""

    mode: Literal["independent", "cumulative"] = "independent"  # cumulative: each variant builds on the one before
    seeds: PositiveInt = 3  # runs per variant, with train.seed, train.seed + 1, ...
    metric: str = "auto"  # a test metric by dotted path; auto: test.accuracy, or test.r2 for regression
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)  # name -> {"section.key" = value, ...}


class SearchConfig(_Section):
    """`dltune tune`: what to search, how to sample it and stop bad trials early, for how long."""

    # metrics by dotted path: val.* / test.* / train.loss, "latency" (ms per test example), "parameters";
    # auto: val.accuracy, or val.r2 for regression. Several: a multi-objective study with a Pareto front.
    objectives: tuple[str, ...] = Field(("auto",), strict=False, min_length=1)
    directions: tuple[Literal["maximize", "minimize", "auto"], ...] = Field((), strict=False)  # auto by metric
    sampler: str = "tpe"  # tpe | random | grid | cmaes | gp | qmc | nsga2
    pruner: str = "asha"  # none | median | percentile | asha | optuna-asha | hyperband (first objective, per epoch)
    trials: PositiveInt = 20  # finished trials (complete or pruned) the study aims for
    timeout: Annotated[float, Field(gt=0.0)] | None = None  # seconds for this invocation
    seed: int = 0  # sampler seed
    min_epochs: PositiveInt = 1  # pruners: epochs before a trial can be stopped (ASHA's min resource)
    reduction_factor: Annotated[int, Field(ge=2)] = 4  # asha, hyperband: keep 1 in this many per rung (as Optuna's SHA)
    max_paused: PositiveInt = 16  # asha: trials waiting at a rung at once, each holding its model in memory
    percentile: Annotated[float, Field(gt=0.0, lt=100.0)] = 25.0  # percentile pruner: keep trials above it
    startup_trials: Annotated[int, Field(ge=0)] = 5  # median, percentile: trials before pruning starts
    top_k: PositiveInt = 5  # trials listed in the results
    space: dict[str, Any] = Field(default_factory=dict)  # "section.key" -> distribution; see docs/tuning.md


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
    ablation: AblationConfig = AblationConfig()
    search: SearchConfig = SearchConfig()


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
    """The resolved experiment as a TOML document. Keys left at None are omitted, and so are the
    [ablation] and [search] sections when unused: they describe studies, not the run."""
    unused = {name for name in ("ablation", "search") if getattr(config, name) == type(getattr(config, name))()}
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
        lines: dict[str, list[str]] = {}  # path -> messages (a union field fails once per alternative)
        for err in e.errors():
            path, message = _describe(err)
            lines.setdefault(path, []).append(message)
        text = "\n".join(f"  {path}: {'; or '.join(messages)}" for path, messages in lines.items())
        raise ConfigError("invalid experiment:\n" + text) from None


def _describe(err: Mapping[str, Any]) -> tuple[str, str]:
    # pydantic names the alternatives of a union in the location ("literal['none','balanced']"): not a key
    loc = tuple(p for p in err["loc"] if isinstance(p, int) or p.isidentifier())
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "(top level)"
    if err["type"] == "extra_forbidden":
        return path, f"unknown key; allowed: {', '.join(_allowed_keys(loc[:-1]))}"
    msg = err["msg"].removeprefix("Value error, ")
    shown = err.get("input")
    got = "" if isinstance(shown, dict) or err["type"] == "value_error" else f" (got {shown!r})"
    return path, f"{msg}{got}"


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
