"""The sections of an experiment file as frozen pydantic models. Defaults live here and nowhere else.

Names of registry entries (dataset, model, optimizer, schedule, loss) are plain strings here; `dltune.run.checks.check`
resolves them against the registries, and import paths (module:attribute) against the user's code.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from dltune.experiment.compress_sections import (
    CompressConfig,
    DistillConfig,
    Int8Config,
    MagnitudeConfig,
    PruneConfig,
)
from dltune.experiment.fields import Fraction, IncreasingEpochs, Local, PositiveInt, Section

__all__ = [
    "AblationConfig",
    "CHANGEABLE",
    "BatchConfig",
    "CodeConfig",
    "CompressConfig",
    "DataConfig",
    "DistillConfig",
    "ExperimentConfig",
    "Int8Config",
    "Local",
    "LossConfig",
    "MagnitudeConfig",
    "MetricsConfig",
    "ModelConfig",
    "OptimConfig",
    "ParallelConfig",
    "PruneConfig",
    "RegularizationConfig",
    "ScheduleConfig",
    "SearchConfig",
    "TrackingConfig",
    "TrainConfig",
    "TransferConfig",
]


class DataConfig(Section):
    """Where the examples come from and how they are split and scaled."""

    name: str = "mnist-5k"  # a dataset of `dltune datasets`, or your loader by import path: "my_data:load"
    args: dict[str, Any] = Field(default_factory=dict)  # your loader's keyword arguments
    # data directory of mnist / fashion-mnist; default $DLTUNE_DATA or ~/.cache/dltune
    dir: Annotated[str | None, Local("path")] = None
    download: bool = True  # fetch missing IDX files from the public mirrors (checked by MD5)
    mirrors: tuple[str, ...] | None = Field(None, strict=False)  # base URLs tried in order; None: built-in list
    path: Annotated[str | None, Local("path")] = None  # csv or npz file
    images: Annotated[str | None, Local("path")] = None  # idx: image file (gzip or raw)
    labels: Annotated[str | None, Local("path")] = None  # idx: label file (gzip or raw)
    target: str | None = None  # csv: name of the target column
    x_key: str = "x"  # npz: array of inputs
    y_key: str = "y"  # npz: array of targets
    task: Literal["auto", "classification", "binary", "regression"] = "auto"
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2  # of all examples, where no test split ships
    val_fraction: Fraction = 0.1  # of the examples left after the test split (0: no validation split)
    limit: PositiveInt | None = None  # keep a stratified subset of this many examples (quick runs)
    normalize: Literal["standard", "none"] = "standard"  # z-score with training-split statistics
    # seed of the split and subset; kept apart from train.seed so seeds share one split. numpy's RandomState takes
    # 0 .. 2**32 - 1, and the validation split draws with seed + 1
    seed: Annotated[int, Field(ge=0, lt=2**32 - 1)] = 0
    # keep only these classes (labels as the source has them, e.g. [5, 6, 7, 8, 9], or class names), relabelled
    # 0..k-1 in this order; every split keeps only them
    classes: Annotated[tuple[int | str, ...], Field(strict=False, min_length=2)] | None = None
    per_class: PositiveInt | None = None  # keep N training examples per class (seeded by data.seed); val and test whole


class ModelConfig(Section):
    """The network; each key applies to the models named in its comment."""

    name: str = "mlp"  # a model of `dltune models`, or your factory by import path: "my_models:build"
    args: dict[str, Any] = Field(default_factory=dict)  # your factory's keyword arguments
    # your training step by import path, "my_steps:step": step(model, batch) -> the batch's mean loss (a scalar
    # tensor), on batches of any form (dicts, several inputs); None: loss(model(x), y) on (x, y) batches
    step: str | None = None
    # with model.step, your evaluation by import path, "my_steps:predict": predict(model, batch) -> (outputs,
    # targets), which [loss] and the task's metrics read on val and test; None: val and test report the step's loss
    predict: str | None = None
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
    # convolutional models (cnn, or yours with 2-d convolutions): weights and image batches in channels-last memory
    # order (NHWC), which oneDNN and cuDNN's convolutions read faster on some machines: `dltune profile` measures it
    channels_last: bool = False


class OptimConfig(Section):
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


class ScheduleConfig(Section):
    """The learning-rate schedule (torch.optim.lr_scheduler); lr is optim.lr at the start (after any warmup).

    Counts in epochs; schedules defined per step (cosine, linear, polynomial, onecycle) step after every
    optimizer step, the others after every epoch.
    """

    # constant | step | multistep | exponential | cosine | linear | polynomial | onecycle | plateau
    name: str = "constant"
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



class LossConfig(Section):
    """The training loss; "auto" is cross_entropy for classification and mse for regression."""

    name: str = "auto"  # auto | cross_entropy | bce | focal | mse | mae | huber, or yours: "my_losses:focal"
    args: dict[str, Any] = Field(default_factory=dict)  # your loss's keyword arguments
    # cross_entropy, focal: a weight per class; balanced: n / (k · count of the class) on the training split
    class_weights: Literal["none", "balanced"] | Annotated[tuple[Annotated[float, Field(gt=0.0)], ...],
                                                           Field(strict=False)] = "none"
    label_smoothing: Fraction = 0.0  # cross_entropy
    pos_weight: Annotated[float, Field(gt=0.0)] | None = None  # bce: weight of positive examples
    gamma: Annotated[float, Field(ge=0.0)] = 2.0  # focal: (1 - p_t)^gamma down-weights easy examples
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None  # focal, binary: weight of the positive class
    huber_delta: Annotated[float, Field(gt=0.0)] = 1.0  # huber: where the loss turns from squared to linear
    threshold: Literal["argmax", "f1", "balanced_accuracy", "youden"] = "argmax"  # binary: decision rule, chosen on val
    # knowledge distillation (Hinton et al. 2015): a run folder whose model teaches this one; the training loss is
    # alpha · T² · KL(teacher ‖ student at temperature T) + (1 - alpha) · the loss above; val and test use the latter
    distill_from: Annotated[str | None, Local("path")] = None
    distill_temperature: Annotated[float, Field(gt=0.0)] = 4.0  # distill_from: T, softens both distributions
    distill_alpha: Annotated[float, Field(ge=0.0, le=1.0)] = 0.9  # distill_from: weight of the teacher's term


class BatchConfig(Section):
    """How many examples each step sees, and how that grows."""

    size: PositiveInt = 100  # examples per forward pass (and per optimizer step without accumulation)
    policy: str = "fixed"  # fixed | grow: size × factor at each epoch of grow_at (Smith et al. 2017)
    grow_at: IncreasingEpochs = ()  # grow: epochs (1-based) where the batch grows
    factor: Annotated[float, Field(gt=1.0)] = 2.0  # grow: multiplier at each growth
    lr_coupling: Literal["none", "linear", "sqrt"] = "none"  # grow: lr × factor (linear) or × √factor per growth
    accumulate: PositiveInt = 1  # batches per optimizer step; the step uses the mean gradient of all their examples
    eval_size: PositiveInt = 1024  # examples per forward pass when evaluating (no effect on results)


class RegularizationConfig(Section):
    """Penalties, noise and stopping rules against overfitting; penalties apply to weights only."""

    l1: Annotated[float, Field(ge=0.0)] = 0.0  # λ of λ·Σ|w| added to the loss
    l2: Annotated[float, Field(ge=0.0)] = 0.0  # λ of λ·Σw² added to the loss
    penalize_all: bool = False  # also penalize biases and normalization parameters (1-d tensors)
    # decoupled (AdamW style): w ← w − lr·decoupled_weight_decay·w per step; optim.weight_decay is the optimizer's own
    decoupled_weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
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


class ParallelConfig(Section):
    """CPU threads, data-loader processes, and training on several processes (torch.distributed, through torchrun)."""

    threads: PositiveInt | None = None  # torch intra-op threads (per process); None: torch's default (one per core)
    workers: Annotated[int, Field(ge=0)] = 0  # DataLoader worker processes (user Datasets only)
    # none: one process; ddp: DistributedDataParallel, nproc replicas, each on its share of every global batch;
    # pipeline: the model split into `stages` consecutive parts, one process each (torch.distributed.pipelining)
    strategy: Literal["none", "ddp", "pipeline"] = "none"
    nproc: PositiveInt = 2  # ddp: processes on each machine (batch.size is the global batch, split among all)
    stages: Annotated[int, Field(ge=2)] = 2  # pipeline: processes, one per stage
    microbatches: PositiveInt = 4  # pipeline: each batch is cut into this many, which flow through the stages
    schedule: Literal["gpipe", "1f1b"] = "gpipe"  # pipeline: all forwards then all backwards, or interleaved
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # torch.distributed backend; auto: nccl on cuda, else gloo


# train.changes: the settings that can change between two epochs of a run, and the range of each ([low, high)): those
# that the optimizer reads afresh at every step (its param groups), so that a change is exact from its epoch on
CHANGEABLE: dict[str, tuple[float, float]] = {"optim.lr": (0.0, float("inf")), "optim.momentum": (0.0, 1.0),
                                               "optim.weight_decay": (0.0, float("inf"))}

# train.auto and `dltune train --auto`: each finder, and the setting it finds
AUTO_FINDS: dict[str, str] = {"batch": "batch.size", "lr": "optim.lr"}


class TrainConfig(Section):
    """Length, seed and device of the run."""

    epochs: PositiveInt = 10
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 1  # initial weights, batch order, dropout (torch takes < 2**64)
    # auto: cuda when available, else cpu; "cuda:N" one GPU of several; "mps" Apple's GPU (where torch has them)
    device: str = "auto"
    deterministic: bool = True  # torch.use_deterministic_algorithms: same seed, same history
    # the float type of the forward pass (torch.autocast; weights, optimizer and metrics stay fp32): bf16 where the
    # device has it (a GPU since Ampere, a CPU with AVX-512 or AMX); fp16 with a GradScaler, on CUDA (or a CPU that
    # torch says has it), whose skipped steps (an overflow) each epoch's record counts
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # settings found before training, on the training split: "lr" (the lr range test; with onecycle, the cycle's
    # peak) and "batch" (the batch finder, throughput mode; the lr rescaled for it unless "lr" is found too)
    auto: tuple[Literal["lr", "batch"], ...] = Field((), strict=False)
    compile: bool = False  # torch.compile the model for training steps (evaluation stays eager); compile time apart
    # save the run's whole state every this many epochs (0: never) in its run folder's checkpoint/, so that a
    # killed run goes on from there: `dltune train --resume RUN_DIR`, the same weights and history as if never killed
    checkpoint_every: Annotated[int, Field(ge=0)] = 0
    # settings that change during training, each from the start of its epoch on (the schedule a PBT search found,
    # say): [{ epoch = 5, "optim.lr" = 0.05 }, { epoch = 9, "optim.lr" = 0.04, "optim.momentum" = 0.85 }], epochs
    # increasing; keys of CHANGEABLE. A changed optim.lr scales whatever [schedule] sets from then on
    changes: tuple[dict[str, Any], ...] = Field((), strict=False)

    @field_validator("device")
    @classmethod
    def _a_device_torch_names(cls, device: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda|cuda:[0-9]+|mps", device):
            raise ValueError("Input should be 'auto', 'cpu', 'cuda', 'cuda:N' (the GPU of index N) or 'mps'")
        return device

    @field_validator("changes")
    @classmethod
    def _changes_of_changeable_keys(cls, changes: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
        last = 1
        for i, change in enumerate(changes):
            epoch = change.get("epoch")
            if type(epoch) is not int or epoch <= last:
                raise ValueError(f"[{i}]: each change needs an epoch, an integer after {last} (epochs increasing), "
                                 f"got {epoch!r}")
            last = epoch
            keys = set(change) - {"epoch"}
            if not keys:
                raise ValueError(f"[{i}]: changes nothing; name a key of {sorted(CHANGEABLE)}")
            for key in sorted(keys):
                if key not in CHANGEABLE:
                    raise ValueError(f"[{i}].{key}: not a setting that can change during training; those that can: "
                                     f"{sorted(CHANGEABLE)}")
                value = change[key]
                low, high = CHANGEABLE[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high or (
                        key == "optim.lr" and value == 0):
                    above = " above 0" if key == "optim.lr" else ""
                    raise ValueError(f"[{i}].{key}: must be a number in [{low}, {high}){above}, got {value!r}")
        return changes


class AblationConfig(Section):
    """`dltune ablate`: the baseline (the rest of the file) against named variants, over seeds."""

    mode: Literal["independent", "cumulative"] = "independent"  # cumulative: each variant builds on the one before
    seeds: PositiveInt = 3  # runs per variant, with train.seed, train.seed + 1, ...
    # a test metric by dotted path; auto: test.accuracy, or test.r2 for regression (test.loss: a step of your own
    # without model.predict reports nothing else)
    metric: str = "auto"
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)  # name -> {"section.key" = value, ...}


class SearchConfig(Section):
    """`dltune tune`: what to search, how to sample it and stop bad trials early, for how long."""

    # metrics by dotted path: val.* / test.* / train.loss, "latency" (ms per test example), "parameters";
    # auto: val.accuracy, or val.r2 for regression. Several: a multi-objective study with a Pareto front.
    objectives: tuple[str, ...] = Field(("auto",), strict=False, min_length=1)
    directions: tuple[Literal["maximize", "minimize", "auto"], ...] = Field((), strict=False)  # auto by metric
    sampler: str = "tpe"  # tpe | random | grid | cmaes | gp | qmc | nsga2
    # none | median | percentile | asha | optuna-asha | hyperband (first objective, per epoch) | pbt (population-based
    # training: the population below, in place of trials and a sampler)
    pruner: str = "asha"
    trials: PositiveInt = 20  # finished trials (complete or pruned) the study aims for
    timeout: Annotated[float, Field(gt=0.0)] | None = None  # seconds for this invocation
    seed: Annotated[int, Field(ge=0, lt=2**32)] = 0  # sampler seed (Optuna's samplers take 0 .. 2**32 - 1)
    min_epochs: PositiveInt = 1  # pruners: epochs before a trial can be stopped (ASHA's min resource)
    reduction_factor: Annotated[int, Field(ge=2)] = 4  # asha, hyperband: keep 1 in this many per rung (as Optuna's SHA)
    max_paused: PositiveInt = 16  # asha: trials waiting at a rung in memory; more wait on disk (a checkpoint each)
    percentile: Annotated[float, Field(gt=0.0, lt=100.0)] = 25.0  # percentile pruner: keep trials above it
    startup_trials: Annotated[int, Field(ge=0)] = 5  # median, percentile: trials before pruning starts
    top_k: PositiveInt = 5  # trials listed in the results
    # pbt (study.pbt): `population` runs of train.epochs each, side by side; every `interval` epochs the bottom
    # `quantile` of them copy the whole state of one of the top `quantile` and change the space's settings: each drawn
    # afresh with resample_probability, else multiplied by one of the `perturb` factors (keys of train.changes only)
    population: Annotated[int, Field(ge=2)] = 8
    interval: PositiveInt = 2
    quantile: Annotated[float, Field(gt=0.0, le=0.5)] = 0.25
    resample_probability: Annotated[float, Field(ge=0.0, le=1.0)] = 0.25
    perturb: tuple[Annotated[float, Field(gt=0.0)], ...] = Field((0.8, 1.2), strict=False, min_length=1)
    space: dict[str, Any] = Field(default_factory=dict)  # "section.key" -> distribution; see docs/tuning.md
    # warm starts: settings to try first, in this order, each once: inline tables of the space's keys
    # ({ "optim.lr" = 3e-3 }) or experiment files (an earlier search's best.toml), whose values of the space's keys
    # the trial takes; a file may differ from this experiment in the space's keys only
    enqueue: Annotated[tuple[str | dict[str, Any], ...], Local("paths")] = Field((), strict=False)


class MetricsConfig(Section):
    """Metrics of your own beside the task's built-in ones, recorded per epoch (val.NAME) and on the test split."""

    extra: tuple[str, ...] = Field((), strict=False)  # import paths of fn(y_true, y_pred) -> float: "my_metrics:f2"


class CodeConfig(Section):
    """Where import paths (module:attribute names) are looked for first, before sys.path."""

    # folders; default: the experiment file's own folder
    paths: Annotated[tuple[str, ...], Local("paths")] = Field((), strict=False)


class TrackingConfig(Section):
    """Where runs are logged besides their run folders (each optional; `pip install 'dltune[tracking]'`)."""

    # a folder: per-epoch scalars and each run's hparams, one subfolder per run
    tensorboard: Annotated[str | None, Local("path")] = None
    # a tracking URI, or true for sqlite:///<output folder>/mlflow.db
    mlflow: Annotated[str | bool, Local("uri")] = False
    experiment: str | None = None  # the MLflow experiment; default: the experiment file's name


class TransferConfig(Section):
    """Start from a trained model's weights (transfer learning, §8.3): freeze layers, unfreeze them gradually, and
    spread learning rates over layer groups; recipe = "fine_tune" is fastai's fine_tune (docs/techniques.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False, serialize_by_alias=True,
                              validate_by_name=True, validate_by_alias=True)

    # a run folder or a .safetensors file (never a pickle)
    from_: Annotated[str | None, Local("path")] = Field(None, alias="from")
    # module-name prefixes, or "body": all but the head
    freeze: Literal["body"] | Annotated[tuple[str, ...], Field(strict=False)] = ()
    unfreeze_at: IncreasingEpochs = ()  # at each epoch, the next frozen layer group from the head down trains again
    lr_mult: Annotated[float, Field(ge=1.0)] = 1.0  # head lr / lowest group's lr (fastai's fine_tune: 100)
    head: Literal["keep", "reset"] = "keep"  # reset: a fresh output layer (always when the class count differs)
    recipe: Literal["none", "fine_tune"] = "none"
    freeze_epochs: Annotated[int, Field(ge=0)] = 1  # fine_tune: epochs of the head alone (0: none), in train.epochs


class ExperimentConfig(Section):
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
    metrics: MetricsConfig = MetricsConfig()
    code: CodeConfig = CodeConfig()
    tracking: TrackingConfig = TrackingConfig()
    ablation: AblationConfig = AblationConfig()
    search: SearchConfig = SearchConfig()
    compress: CompressConfig = CompressConfig()
    transfer: TransferConfig = TransferConfig()
