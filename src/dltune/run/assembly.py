"""What a run trains, put together as `train` does: the splits, the loss, a freshly seeded model on its device, and
its shuffled batches. The finders train from the same pieces."""

from __future__ import annotations

import contextlib
import copy
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from dltune.data import (
    LoaderSplits,
    TensorSplits,
    TorchSplits,
    is_loaders,
    load_data,
    loader_splits,
    to_device,
    torch_splits,
)
from dltune.errors import ConfigError
from dltune.experiment.config import ExperimentConfig
from dltune.models import build_model
from dltune.run.checks import need_validation
from dltune.run.metrics import ExtraMetric, evaluate, extra_metrics
from dltune.run.precision import Precision, precision_for
from dltune.run.runtime import device_for, torch_settings, torch_state_kept
from dltune.run.saved import load_state, read_run
from dltune.run.steps import OwnStep, own_step
from dltune.techniques.losses import LossContext, build_loss, distillation
from dltune.techniques.optim import build_optimizer
from dltune.techniques.regularization import apply_dropconnect
from dltune.techniques.schedules import Schedule, build_schedule
from dltune.techniques.transfer import FINE_TUNE, Freezer, Loaded, fine_tune_schedule, load_pretrained, param_groups

__all__ = ["Data", "LossFn", "Model", "Setup", "Splits", "TrainLossFn", "batcher", "compiled_for_training", "on_device",
           "optimizing", "preflight", "recorded_splits", "saved_model", "setup", "splits_for"]

Splits = TensorSplits | TorchSplits | LoaderSplits
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
TrainLossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (outputs, inputs, targets)


Data = Dataset | DataLoader | Splits | tuple[Any, ...] | Callable[..., Any]  # what `data=` may be, from Python
Model = nn.Module | Callable[..., nn.Module]  # what `model=` may be, from Python


@dataclass
class Setup:
    """What a run trains: the data, the loss, a freshly seeded model on its device, and the user's metrics."""

    splits: Splits
    loss_fn: LossFn
    model: nn.Module
    device: torch.device
    precision: Precision  # train.precision on the device
    metrics: list[ExtraMetric] = field(default_factory=list)
    train_loss: TrainLossFn | None = None  # the training loss where it needs the inputs too (distillation)
    transfer: Loaded | None = None  # transfer.from: what was loaded
    own: OwnStep | None = None  # model.step (and model.predict): the user's step in place of loss(model(x), y)
    channels_last: bool = False  # model.channels_last: image batches are made channels-last too

    def loss_of(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """One batch's mean training loss through `model` (the model, or its DDP or compiled twin), in fp32: the
        user's step, or the [loss] of the model's outputs on an (x, y) batch, computed under train.precision's
        autocast."""
        with self.autocast():
            if self.own is not None:
                return self.own.step(model, batch).float()
            xb, yb = batch
            return self.loss_from(self.forward(model, xb), xb, yb)

    def forward(self, model: nn.Module, xb: torch.Tensor) -> torch.Tensor:
        """`model`'s outputs on an input batch (image batches made channels-last where the model is); called inside
        autocast(), as loss_of calls it."""
        if self.channels_last and xb.dim() == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return model(xb)

    def loss_from(self, out: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """The [loss] of outputs `out` of inputs `xb` against targets `yb`, in fp32; called inside autocast()."""
        loss = self.loss_fn(out, yb) if self.train_loss is None else self.train_loss(out, xb, yb)
        return loss.float()

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """train.precision's autocast (nothing in fp32)."""
        return self.precision.autocast()


def setup(config: ExperimentConfig, data: Data | None = None, model: Model | None = None) -> Setup:
    """Load the data, build the loss and the model (seeded by train.seed) as `train` does; call it inside
    `torch_settings(config)`.

    From Python, `data` replaces data.name (a torch Dataset, ready splits, arrays (x, y), torch DataLoaders, or a
    loader called with data.args) and `model` replaces model.name: a factory called as model(input_shape,
    n_outputs, **model.args) (with DataLoaders, whose batches dltune does not read: model(**model.args)), or an
    nn.Module, of which each run trains its own deep copy (its weights as given, not drawn by train.seed).
    model.step and model.predict: the user's step and evaluation (run.steps), imported here."""
    device = device_for(config.train.device)
    precision = precision_for(config.train.precision, device)
    folders = config.code.paths
    splits = splits_for(config, data)
    if splits.val is None:
        need_validation(config)
    loss_fn, n_outputs = _loss(config, splits)
    torch.manual_seed(config.train.seed)
    if isinstance(model, nn.Module):
        net = copy.deepcopy(model)
    else:
        shape = None if isinstance(splits, LoaderSplits) else splits.input_shape
        net = build_model(config.model, shape, n_outputs, folders, factory=model)
    transfer = (load_pretrained(net, config.transfer, splits.info.get("classes"))
                if config.transfer.from_ is not None else None)
    net = net.to(device)
    if config.model.channels_last:
        _check_convolutional(net, config)
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch documents it
    if config.regularization.dropconnect > 0:
        apply_dropconnect(net, config.regularization.dropconnect)
    train_loss = None
    if config.loss.distill_from is not None:
        teacher = saved_model(config.loss.distill_from, splits, "loss.distill_from").to(device)
        _check_teacher(teacher, net, splits, next(batcher(splits, config, device)(2))[0], config.loss.distill_from)
        train_loss = distillation(teacher, loss_fn, config.loss.distill_temperature, config.loss.distill_alpha)
    return Setup(splits, loss_fn, net, device, precision, extra_metrics(config.metrics.extra, folders), train_loss,
                 transfer, own_step(config), config.model.channels_last)


def _check_convolutional(net: nn.Module, config: ExperimentConfig) -> None:
    if not any(isinstance(m, nn.Conv2d) for m in net.modules()):
        raise ConfigError(f"model.channels_last: the model ({config.model.name}) has no 2-d convolution, whose "
                          "memory order it changes; leave it false (or use model.name = \"cnn\")")


def saved_model(path: str | Path, splits: Splits | None = None, key: str = "RUN_DIR") -> nn.Module:
    """The trained model of the run folder at `path`, on the CPU in eval mode, for inputs of `splits` (None: of the
    data the run recorded in its metrics.json, which is not loaded)."""
    saved = read_run(path, key)
    cfg = saved.config
    if cfg.model.step is not None:
        raise ConfigError(f"{key}: {path} was trained with a step of its own (model.step = {cfg.model.step!r}); "
                          "compress, ensemble and predict work on models of (x, y) batches, which dltune can feed")
    if splits is None:
        splits = recorded_splits(saved.metrics.get("data"), f"{key}: {path}")
    _, n_outputs = _loss(cfg, splits)
    with torch_state_kept(rng=True):
        net = build_model(cfg.model, splits.input_shape, n_outputs, cfg.code.paths)
    return load_state(net, saved.state, f"{key}: {path}").eval()


def recorded_splits(info: dict[str, Any] | None, named: str) -> TensorSplits:
    """Splits with no examples, shaped as a run's data was (the "data" of its metrics.json): enough to build the
    run's model and loss again without loading its data."""
    if not info or "input_shape" not in info or "task" not in info:
        raise ConfigError(f"{named}: its metrics.json records no data (input shape, task), so its model cannot be "
                          "built without its data")
    shape = tuple(int(d) for d in info["input_shape"])
    empty = (torch.zeros((0, *shape)), torch.zeros(0))
    classes = info.get("classes")
    return TensorSplits(train=empty, val=None, test=empty, task=info["task"], input_shape=shape,
                        n_outputs=1 if info["task"] == "regression" else len(classes or []), info=info)


def _loss(config: ExperimentConfig, splits: Splits) -> tuple[LossFn, int]:
    """The experiment's loss for these splits, and the model outputs it needs (one logit for a single-logit loss)."""
    if isinstance(splits, LoaderSplits) and config.model.predict is not None and config.data.task == "auto":
        raise ConfigError("data.task: set it (classification, binary or regression) for DataLoaders of your own: it "
                          "says how model.predict's outputs and targets are scored, which dltune cannot tell from "
                          "batches it does not read")
    counts = splits.info.get("class_counts")
    loss_fn, loss = build_loss(config.loss, LossContext(splits.task, None if counts is None else np.array(counts)),
                               config.code.paths)
    return loss_fn, 1 if loss.single_logit else splits.n_outputs


def _check_teacher(teacher: nn.Module, student: nn.Module, splits: Splits, x: torch.Tensor, path: str) -> None:
    """The teacher and the student give outputs of one shape on the training batch `x` (a classification task)."""
    if splits.task != "classification":
        raise ConfigError(f"loss.distill_from: distillation matches class probabilities; this is a {splits.task} "
                          "task")
    with torch.no_grad(), torch_state_kept(rng=True):
        student.eval()
        theirs, ours = teacher(x).shape, student(x).shape
        student.train()
    if theirs != ours:
        raise ConfigError(f"loss.distill_from: the teacher ({path}) gives outputs of shape {tuple(theirs[1:])} per "
                          f"example, the student {tuple(ours[1:])}: they must predict the same classes")


def preflight(config: ExperimentConfig, data: Data | None = None, model: Model | None = None) -> Setup:
    """Put a run together once and pass one batch through the model, the loss and the metrics, so that bad code of
    the user's own (a factory that raises, a loss that is not a scalar) fails before a study writes anything.
    torch's random state and settings are left as they were."""
    with torch_state_kept(rng=True), torch_settings(config):
        run = setup(config, data, model)
        batch = next(batcher(run.splits, config, run.device)(min(config.batch.size, 32)))
        run.model.eval()
        with torch.no_grad(), run.autocast():
            if run.own is not None:
                run.own.step(run.model, batch)
                if run.own.predict is None:
                    return run
                out, yb = run.own.predict(run.model, batch)
            else:
                xb, yb = batch
                out = run.model(xb)
            run.loss_fn(out, yb)
            evaluate(run.splits.task, out, yb, run.splits.target_scale, None, run.metrics)
        return run


def batcher(splits: Splits, cfg: ExperimentConfig, device: torch.device, generator: torch.Generator | None = None,
            shard: tuple[int, int] | None = None) -> Callable[[int], Iterator[Any]]:
    """A function that yields one epoch of shuffled training batches of a given size on `device`, in the order
    that `generator` draws (default: one seeded by train.seed): (x, y) pairs, or the user's own batches of
    DataLoaders, which under DDP (`shard`: this rank and the world) each rank reads its share of through a
    DistributedSampler."""
    if generator is None:  # batch order, apart from dropout's stream
        generator = torch.Generator().manual_seed(cfg.train.seed)
    if isinstance(splits, LoaderSplits):
        return _loader_batches(splits.train, cfg, device, generator, shard)
    if isinstance(splits, TensorSplits):
        x, y = (t.to(device) for t in splits.train)

        def tensor_epoch(size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            order = torch.randperm(len(y), generator=generator).to(device)
            xs, ys = x[order], y[order]  # one gather per epoch; the batches are then views
            for i in range(0, len(ys), size):
                yield xs[i : i + size], ys[i : i + size]

        return tensor_epoch
    loaders: dict[int, DataLoader] = {}  # one per batch size, so that workers persist across epochs

    def loader_epoch(size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if size not in loaders:
            loaders[size] = DataLoader(splits.train, batch_size=size, shuffle=True, generator=generator,
                                       num_workers=cfg.parallel.workers, persistent_workers=cfg.parallel.workers > 0,
                                       pin_memory=device.type == "cuda")
        for xb, yb in loaders[size]:
            yield on_device(xb, yb, splits.task, device)

    return loader_epoch


def _loader_batches(train: DataLoader, cfg: ExperimentConfig, device: torch.device, generator: torch.Generator,
                    shard: tuple[int, int] | None) -> Callable[[int], Iterator[Any]]:
    """The user's training DataLoader made again for each batch size, with its collate_fn (and its workers, unless
    parallel.workers sets them); under DDP each rank reads size / world examples of each global batch."""
    loaders: dict[int, DataLoader] = {}
    workers = cfg.parallel.workers or train.num_workers
    epochs = itertools.count()  # a DistributedSampler's epoch: its shuffle differs each epoch

    def loader_epoch(size: int) -> Iterator[Any]:
        epoch = next(epochs)
        if size not in loaders:
            common: dict[str, Any] = dict(collate_fn=train.collate_fn, num_workers=workers, drop_last=train.drop_last,
                                          persistent_workers=workers > 0, pin_memory=device.type == "cuda")
            if shard is None:
                loaders[size] = DataLoader(train.dataset, batch_size=size, shuffle=True, generator=generator, **common)
            else:
                rank, world = shard
                sampler: DistributedSampler = DistributedSampler(train.dataset, world, rank, shuffle=True,
                                                                 seed=cfg.train.seed)
                loaders[size] = DataLoader(train.dataset, batch_size=size // world, sampler=sampler, **common)
        loader = loaders[size]
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            yield to_device(batch, device)

    return loader_epoch


def on_device(xb: torch.Tensor, yb: torch.Tensor, task: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch as the model reads it: float inputs, and long class targets or float regression targets."""
    yb = yb.float() if task == "regression" else yb.long()
    return xb.float().to(device, non_blocking=True), yb.to(device, non_blocking=True)


def splits_for(config: ExperimentConfig, data: Data | None = None) -> Splits:
    """The splits a run trains on: data.name loaded, or what `data` gives from Python (see `setup`)."""
    if data is None:
        return load_data(config.data, config.code.paths)
    if isinstance(data, (TensorSplits, TorchSplits, LoaderSplits)):
        return data
    if is_loaders(data):
        return loader_splits(data, config.data, "data (DataLoaders given from Python)")
    if isinstance(data, Dataset):
        return torch_splits(data, config.data)
    if isinstance(data, tuple):
        return load_data(config.data, loader=lambda **_: data)
    if callable(data):
        return load_data(config.data, loader=data)
    raise TypeError(f"data must be a torch Dataset, TensorSplits, arrays (x, y), DataLoaders or a loader, not "
                    f"{type(data).__name__}")


def compiled_for_training(model: nn.Module, run: Setup, sizes: list[int], n_train: int) -> tuple[nn.Module, float]:
    """`torch.compile(model)` for the training steps (train.compile), and the seconds spent compiling.

    It is compiled here, before the first epoch, on every batch shape the run will see (each batch size
    and an epoch's last, smaller batch), so that the epochs' time holds no compiling. The warm-up's
    forward and backward passes leave no trace: weights, buffers (BatchNorm's statistics), gradients
    and the random state are as they were. The compiled module shares the model's parameters; evaluation
    uses the model itself, eagerly. A Dataset split compiles on first use, inside the first epoch."""
    compiled = torch.compile(model)
    assert isinstance(compiled, nn.Module)  # a module compiles to an OptimizedModule (typed as any callable)
    splits = run.splits
    if not isinstance(splits.train, tuple):
        return compiled, 0.0
    x, y = splits.train
    shapes = sorted({s for b in set(sizes) for s in (min(b, n_train), n_train % b) if s}, reverse=True)
    saved = copy.deepcopy(model.state_dict())
    start = time.perf_counter()
    with torch_state_kept(rng=True):
        model.train()
        for b in shapes:  # in the run's precision: autocast is compiled into the graph
            run.loss_of(compiled, on_device(x[:b], y[:b], splits.task, run.device)).backward()
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    model.load_state_dict(saved)
    return compiled, seconds


def optimizing(cfg: ExperimentConfig, model: nn.Module, epoch_steps: list[int]
                ) -> tuple[torch.optim.Optimizer, Schedule, Freezer]:
    """The optimizer, the lr schedule and what [transfer] freezes: layer groups with rates of their own
    (transfer.lr_mult), and the fine_tune recipe (transfer.recipe) in place of [schedule]."""
    t = cfg.transfer
    optimizer = build_optimizer(cfg.optim, param_groups(model, cfg.optim.lr, t.lr_mult)
                                if t.lr_mult != 1.0 else model.parameters())
    if t.recipe == "fine_tune":
        head_steps = sum(epoch_steps[: t.freeze_epochs])
        schedule = Schedule(optimizer, fine_tune_schedule(optimizer, head_steps, sum(epoch_steps) - head_steps),
                            "batch")
        frozen = "body" if t.freeze_epochs else ()  # freeze_epochs 0: no head phase, one cycle
        return optimizer, schedule, Freezer(model, frozen, [t.freeze_epochs + 1] if frozen else [],
                                            FINE_TUNE["train_bn"])
    schedule = build_schedule(cfg.schedule, optimizer, epoch_steps)
    return optimizer, schedule, Freezer(model, t.freeze, t.unfreeze_at)
