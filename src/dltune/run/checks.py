"""Rules an experiment must keep before any work: names that the registries know, and settings that
contradict each other (each error names its path)."""

from __future__ import annotations

from dltune.data import DATASETS
from dltune.errors import ConfigError
from dltune.experiment.config import ExperimentConfig
from dltune.experiment.sections import AUTO_FINDS
from dltune.imports import is_import_path, load
from dltune.models import MODELS
from dltune.run.metrics import extra_metrics
from dltune.run.precision import precision_for
from dltune.run.runtime import device_for
from dltune.techniques.batching import BATCH_POLICIES, batch_sizes
from dltune.techniques.losses import LOSSES
from dltune.techniques.optim import OPTIMIZERS
from dltune.techniques.schedules import SCHEDULES

__all__ = ["check", "check_auto_against", "check_sharded", "check_world", "need_validation"]



def check(config: ExperimentConfig, *, user_data: bool = False, user_model: bool = False) -> None:
    """Reject unknown names and settings that contradict each other, before any work (errors name paths). Names
    given by import path are imported here (their module's code runs) and must name something to call."""
    folders = config.code.paths
    for key, name, registry, given in (("data.name", config.data.name, DATASETS, user_data),
                                       ("model.name", config.model.name, MODELS, user_model),
                                       ("loss.name", config.loss.name, LOSSES, config.loss.name == "auto")):
        if given:
            continue
        if is_import_path(name):
            load(name, key, folders)
        else:
            registry.get(name, path=key)
    extra_metrics(config.metrics.extra, folders)
    _check_step(config)
    OPTIMIZERS.get(config.optim.name, path="optim.name")
    SCHEDULES.get(config.schedule.name, path="schedule.name")
    BATCH_POLICIES.get(config.batch.policy, path="batch.policy")
    epochs, batch, s = config.train.epochs, config.batch, config.schedule
    if batch.policy != "grow" and (batch.grow_at or batch.lr_coupling != "none"):
        raise ConfigError('batch.grow_at, batch.lr_coupling: only used with batch.policy = "grow"')
    if batch.policy == "grow" and not batch.grow_at:
        raise ConfigError("batch.grow_at: batch.policy grow needs the epochs at which the batch grows")
    if batch.grow_at and batch.grow_at[-1] > epochs:
        raise ConfigError(f"batch.grow_at: epoch {batch.grow_at[-1]} is after the last epoch ({epochs})")
    if s.name == "multistep" and not s.milestones:
        raise ConfigError("schedule.milestones: multistep needs the epochs after which the lr decays")
    if s.warmup_epochs >= epochs:
        raise ConfigError(f"schedule.warmup_epochs: {s.warmup_epochs} leaves no epoch of the run ({epochs}) after it")
    if not user_data and config.data.val_fraction == 0:
        need_validation(config)
    _check_transfer(config)
    _check_parallel(config, user_data or user_model)
    _check_precision(config)
    _check_changes(config)


def _check_changes(config: ExperimentConfig) -> None:
    """train.changes within the run, and of settings that its optimizer has."""
    for i, change in enumerate(config.train.changes):
        if change["epoch"] > config.train.epochs:
            raise ConfigError(f"train.changes[{i}].epoch: {change['epoch']} is after the last epoch "
                              f"({config.train.epochs})")
        if "optim.momentum" in change and config.optim.name != "sgd":  # rmsprop makes its buffer at the first step
            raise ConfigError(f"train.changes[{i}].optim.momentum: changes with optim.name = \"sgd\" only, not "
                              f"{config.optim.name!r}")


def _check_precision(config: ExperimentConfig) -> None:
    """train.precision on train.device, where this process sees that device (setup checks it again where the run
    trains: a Ray worker's GPU, say)."""
    try:
        device = device_for(config.train.device)
    except ConfigError:
        return
    precision_for(config.train.precision, device)


def _check_step(config: ExperimentConfig) -> None:
    """model.step and model.predict name functions of the user's own; techniques that change the inputs or the
    loss of (x, y) batches cannot reach into a step of the user's."""
    m = config.model
    if m.predict is not None and m.step is None:
        raise ConfigError("model.predict: your evaluation goes with a training step of your own; set model.step too")
    for key in ("step", "predict"):
        if getattr(m, key) is not None:
            load(getattr(m, key), f"model.{key}", config.code.paths)
    if m.step is None:
        return
    needs_pairs = {"regularization.augment": bool(config.regularization.augment),
                   "loss.distill_from": config.loss.distill_from is not None,
                   "parallel.strategy": config.parallel.strategy == "pipeline"}
    for key, used in needs_pairs.items():
        if used:
            raise ConfigError(f"{key}: works on (x, y) batches through the model's forward and the [loss], which a "
                              f"training step of your own (model.step = {m.step!r}) does itself; leave {key} unset "
                              "or do it in your step")


def need_validation(config: ExperimentConfig) -> None:
    """Refuse settings that watch val.loss when there is no validation split."""
    if SCHEDULES.get(config.schedule.name).needs_validation:
        raise ConfigError("schedule.name: plateau watches val.loss, but there is no validation split "
                          "(data.val_fraction = 0)")
    if config.regularization.early_stopping is not None:
        raise ConfigError("regularization.early_stopping: watches val.loss, but there is no validation split "
                          "(data.val_fraction = 0)")


def check_auto_against(config: ExperimentConfig, paths: set[str], where: str = "") -> None:
    """Refuse a variant or a search space (errors start with `where`) that sets what `train.auto` finds: the
    finder would overwrite it, and the comparison would not be the one asked for."""
    for finder in config.train.auto:
        if AUTO_FINDS[finder] in paths:
            raise ConfigError(f"{where}{AUTO_FINDS[finder]}: train.auto finds it ({finder!r}); set it or find it, "
                              "not both")


def _check_transfer(config: ExperimentConfig) -> None:
    t, epochs = config.transfer, config.train.epochs
    if t.unfreeze_at and not t.freeze:
        raise ConfigError("transfer.unfreeze_at: nothing is frozen; set transfer.freeze (\"body\" or module names)")
    if t.unfreeze_at and t.unfreeze_at[-1] > epochs:
        raise ConfigError(f"transfer.unfreeze_at: epoch {t.unfreeze_at[-1]} is after the last epoch ({epochs})")
    if t.recipe != "fine_tune":
        return
    if t.from_ is None:
        raise ConfigError("transfer.recipe: fine_tune fine-tunes a trained model; set transfer.from (a run folder or "
                          "a .safetensors file)")
    if t.freeze or t.unfreeze_at:
        raise ConfigError("transfer.freeze, transfer.unfreeze_at: fine_tune freezes the body for "
                          "transfer.freeze_epochs and then unfreezes it; leave them unset")
    if config.schedule.name != "constant" or config.schedule.warmup_epochs:
        raise ConfigError(f"schedule.name: fine_tune sets the lr schedule itself (two one-cycles); leave [schedule] "
                          f"unset (it is {config.schedule.name!r})")
    if epochs <= t.freeze_epochs:
        raise ConfigError(f"train.epochs: {epochs} leaves no epoch after transfer.freeze_epochs ({t.freeze_epochs}); "
                          "fine_tune trains the head alone, then everything (fastai's fine_tune(4) is train.epochs = "
                          "5 with freeze_epochs = 1)")


def _check_parallel(config: ExperimentConfig, python_objects: bool) -> None:
    """parallel.strategy ddp and pipeline: what cannot cross to the processes that torchrun starts, or has no
    meaning in them, is refused before they start."""
    p, reg = config.parallel, config.regularization
    if p.strategy == "none":
        return
    why = f"parallel.strategy = {p.strategy!r} trains in new processes"
    if python_objects:
        raise ConfigError(f"{why}, which cannot receive data= or model= objects from Python; name them by import "
                          "path ([data] name = \"module:function\", [model] name = \"module:function\")")
    if config.train.compile:
        raise ConfigError(f"train.compile: not with parallel.strategy = {p.strategy!r}; compile in one process")
    if config.train.checkpoint_every:
        raise ConfigError(f"train.checkpoint_every: not with parallel.strategy = {p.strategy!r} yet; a distributed "
                          "run cannot be resumed, so leave it at 0")
    if p.strategy != "pipeline":
        return
    unsupported = {"batch.accumulate": config.batch.accumulate > 1, "regularization.l1": reg.l1 > 0,
                   "regularization.l2": reg.l2 > 0, "regularization.clip_norm": reg.clip_norm is not None,
                   "regularization.augment": bool(reg.augment),
                   "loss.distill_from": config.loss.distill_from is not None,
                   "transfer.freeze": bool(config.transfer.freeze) or config.transfer.recipe == "fine_tune",
                   "transfer.lr_mult": config.transfer.lr_mult != 1.0,
                   "train.precision": config.train.precision != "fp32"}
    for key, used in unsupported.items():
        if used:
            raise ConfigError(f"{key}: not supported with parallel.strategy = \"pipeline\" (each stage steps its own "
                              "parameters); use parallel.strategy = \"ddp\", or leave it unset")


def check_world(config: ExperimentConfig, world: int) -> None:
    """A distributed run of `world` processes in all: each global batch must give every process examples (DDP), and
    parallel.microbatches must cut each batch size into equal micro-batches (pipeline; an epoch's last, shorter
    batch is cut into as many equal ones as divide it)."""
    p = config.parallel
    sizes = sorted(set(batch_sizes(config.batch, config.train.epochs)))
    if p.strategy == "ddp" and sizes[0] < world:
        raise ConfigError(f"batch.size: the global batch ({sizes[0]}) is smaller than the {world} processes of "
                          "parallel.nproc; each process trains on its share of every batch")
    uneven = [b for b in sizes if b % p.microbatches]
    if p.strategy == "pipeline" and uneven:
        raise ConfigError(f"parallel.microbatches: {p.microbatches} does not divide the batch ({uneven[0]}); each "
                          "micro-batch must have the same number of examples")


def check_sharded(config: ExperimentConfig, world: int) -> None:
    """DDP over the user's DataLoaders: each of `world` processes reads batch.size / world examples of each global
    batch through a DistributedSampler, so every batch size must divide by the processes."""
    uneven = [b for b in sorted(set(batch_sizes(config.batch, config.train.epochs))) if b % world]
    if uneven:
        raise ConfigError(f"batch.size: {uneven[0]} does not divide by the {world} processes of parallel.nproc; with "
                          "DataLoaders of your own, each process reads an equal share of every batch")
