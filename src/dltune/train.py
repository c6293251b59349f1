"""The one training loop: train(config, on_epoch=None) -> RunResult."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dltune.augment import build_augment
from dltune.batching import BATCH_POLICIES, batch_sizes, lr_scales, optimizer_steps
from dltune.config import ExperimentConfig, load_config
from dltune.data import DATASETS, TensorSplits, TorchSplits, load_data, torch_splits
from dltune.environment import environment
from dltune.errors import ConfigError
from dltune.losses import LOSSES, LossContext, build_loss, resolve_loss_name
from dltune.metrics import choose_threshold, evaluate, positive_probability
from dltune.models import MODELS, build_model, count_parameters
from dltune.optim import OPTIMIZERS, build_optimizer
from dltune.regularization import (EarlyStopping, apply_dropconnect, build_penalty, clip_gradients, decay_weights,
                                   penalized_weights)
from dltune.results import RunResult, Status, prepare_run_dir, write_run
from dltune.schedules import SCHEDULES, build_schedule

__all__ = ["RunResult", "Setup", "batcher", "check", "prepare_run_dir", "setup", "torch_settings", "torch_state_kept", "train", "write_run"]

OnEpoch = Callable[[int, dict[str, Any]], Any]  # may return "stop"
Splits = TensorSplits | TorchSplits
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check(config: ExperimentConfig, *, user_data: bool = False) -> None:
    """Reject unknown names and settings that contradict each other, before any work (errors name paths)."""
    if not user_data:
        DATASETS.get(config.data.name, path="data.name")
    MODELS.get(config.model.name, path="model.name")
    OPTIMIZERS.get(config.optim.name, path="optim.name")
    SCHEDULES.get(config.schedule.name, path="schedule.name")
    BATCH_POLICIES.get(config.batch.policy, path="batch.policy")
    if config.loss.name != "auto":
        LOSSES.get(config.loss.name, path="loss.name")
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
        _need_validation(config)


def _need_validation(config: ExperimentConfig) -> None:
    if SCHEDULES.get(config.schedule.name).needs_validation:
        raise ConfigError("schedule.name: plateau watches val.loss, but there is no validation split "
                          "(data.val_fraction = 0)")
    if config.regularization.early_stopping is not None:
        raise ConfigError("regularization.early_stopping: watches val.loss, but there is no validation split "
                          "(data.val_fraction = 0)")


def train(
    config: ExperimentConfig | str | Path,
    on_epoch: OnEpoch | None = None,
    *,
    data: Dataset | Splits | None = None,
    out_dir: str | Path | None = None,
) -> RunResult:
    """Train one model as `config` says and evaluate it on the test split.

    `on_epoch(epoch, record)` is called after every epoch (1-based) with that epoch's record;
    returning "stop" ends the run with status "stopped" (how a search prunes). A loss that
    becomes NaN or infinite ends it with status "diverged". `data` replaces data.name with a
    torch Dataset (split by the [data] fractions) or ready splits. With `out_dir`, the run's
    config, metrics, weights and environment are written there.
    """
    if not isinstance(config, ExperimentConfig):
        config = load_config(config)
    check(config, user_data=data is not None)
    with torch_settings(config):
        run = setup(config, data)
        result = _fit(config, run.splits, run.model, run.loss_fn, run.device, on_epoch)
        result.data = {**run.splits.info, "loss": resolve_loss_name(config.loss, run.splits.task)}
        result.environment = environment(str(run.device), config.parallel.workers)
    if out_dir is not None:
        write_run(result, out_dir)
    return result


@dataclass
class Setup:
    """What a run trains: the data, the loss, a freshly seeded model on its device."""

    splits: Splits
    loss_fn: LossFn
    model: nn.Module
    device: torch.device


def setup(config: ExperimentConfig, data: Dataset | Splits | None = None) -> Setup:
    """Load the data, build the loss and the model (seeded by train.seed) as `train` does; call it inside
    `torch_settings(config)`."""
    device = _device(config.train.device)
    splits = _splits(config, data)
    if splits.val is None:
        _need_validation(config)
    counts = splits.info.get("class_counts")
    loss_fn, loss = build_loss(config.loss, LossContext(splits.task, None if counts is None else np.array(counts)))
    torch.manual_seed(config.train.seed)
    model = build_model(config.model, splits.input_shape, 1 if loss.single_logit else splits.n_outputs).to(device)
    if config.regularization.dropconnect > 0:
        apply_dropconnect(model, config.regularization.dropconnect)
    return Setup(splits, loss_fn, model, device)


def _fit(cfg: ExperimentConfig, splits: Splits, model: nn.Module, loss_fn: LossFn,
         device: torch.device, on_epoch: OnEpoch | None) -> RunResult:
    epochs, reg, accumulate = cfg.train.epochs, cfg.regularization, cfg.batch.accumulate
    n_train = _length(splits.train)
    sizes, scales = batch_sizes(cfg.batch, epochs), lr_scales(cfg.batch, epochs)
    optimizer = build_optimizer(cfg.optim, model.parameters())
    schedule = build_schedule(cfg.schedule, optimizer, [optimizer_steps(n_train, s, accumulate) for s in sizes])
    penalty = build_penalty(reg, model)
    decayed = penalized_weights(model, reg.penalize_all) if reg.weight_decay > 0 else None
    clipping = reg.clip_norm is not None or reg.clip_value is not None
    augment = build_augment(reg, splits.input_shape, cfg.train.seed)
    stopper = EarlyStopping(reg.early_stopping, reg.min_delta) if reg.early_stopping else None
    batches = batcher(splits, cfg, device)

    status: Status = "completed"
    history: list[dict[str, Any]] = []
    train_seconds = 0.0
    for epoch in range(1, epochs + 1):
        size = sizes[epoch - 1]
        schedule.set_scale(scales[epoch - 1])
        n_batches = math.ceil(n_train / size)
        lr = optimizer.param_groups[0]["lr"]
        lr_low = lr_high = lr
        grad_norm = 0.0
        model.train()
        total_loss = torch.zeros((), device=device)
        total_penalty = torch.zeros((), device=device)
        start = time.perf_counter()
        for i, (xb, yb) in enumerate(batches(size)):
            if augment is not None:
                xb = augment(xb)
            loss = loss_fn(model(xb), yb)
            total_loss += loss.detach() * len(yb)
            if penalty is not None:
                p = penalty()
                total_penalty += p.detach() * len(yb)
                loss = loss + p
            if accumulate > 1:  # weigh by examples, so a step's gradient is the mean over all its batches
                first = (i - i % accumulate) * size
                loss = loss * (len(yb) / (min(n_train, first + accumulate * size) - first))
            loss.backward()
            if accumulate > 1 and (i + 1) % accumulate and i + 1 < n_batches:
                continue  # gradients add up until the step
            if clipping:
                grad_norm = max(grad_norm, clip_gradients(model, reg) or 0.0)
            if decayed is not None:
                decay_weights(decayed, optimizer.param_groups[0]["lr"], reg.weight_decay)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.after_step()
            if schedule.unit == "batch":  # the lr of the next step
                now = optimizer.param_groups[0]["lr"]
                lr_low, lr_high = min(lr_low, now), max(lr_high, now)
        train_loss = total_loss.item() / n_train  # .item() also waits for an asynchronous device
        seconds = time.perf_counter() - start
        train_seconds += seconds

        record: dict[str, Any] = {"epoch": epoch, "train": {"loss": train_loss}}
        if penalty is not None:
            record["train"]["penalty"] = total_penalty.item() / n_train
        if reg.clip_norm is not None:
            record["train"]["grad_norm"] = grad_norm  # the largest before clipping
        eval_start = time.perf_counter()
        if splits.val is not None and math.isfinite(train_loss):
            record["val"] = _evaluate(model, splits.val, splits, loss_fn, cfg, device)
        record.update(lr=lr, batch_size=size, seconds=seconds, eval_seconds=time.perf_counter() - eval_start,
                      samples_per_second=n_train / seconds)
        if schedule.unit == "batch":
            record["lr_range"] = [lr_low, lr_high]
        history.append(record)
        if not math.isfinite(train_loss):
            status = "diverged"
            break
        val_loss = record.get("val", {}).get("loss")
        schedule.after_epoch(val_loss)
        if on_epoch is not None and on_epoch(epoch, record) == "stop":
            status = "stopped"
            break
        if stopper is not None and stopper.update(epoch, val_loss, model):
            break

    best_epoch = None
    if stopper is not None and status != "diverged":
        best_epoch = stopper.best_epoch
        if reg.restore_best:
            stopper.restore(model)
    threshold, test = None, {}
    if status != "diverged":
        if cfg.loss.threshold != "argmax" and splits.val is not None:
            out, y = _outputs(model, splits.val, splits, cfg, device)
            threshold = choose_threshold(cfg.loss.threshold, y.cpu().numpy(), positive_probability(out))
        test = _evaluate(model, splits.test, splits, loss_fn, cfg, device, threshold)
    return RunResult(
        status=status, epochs=history, test=test, train_seconds=train_seconds,
        samples_per_second=n_train * len(history) / train_seconds if train_seconds > 0 else 0.0,
        parameters=count_parameters(model), config=cfg, best_epoch=best_epoch, threshold=threshold, model=model,
    )


def batcher(splits: Splits, cfg: ExperimentConfig, device: torch.device) -> Callable[[int], Iterator[tuple]]:
    """A function that yields one epoch of shuffled training batches of a given size on `device`."""
    generator = torch.Generator().manual_seed(cfg.train.seed)  # batch order, apart from dropout's stream
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
            yield _on(xb, yb, splits.task, device)

    return loader_epoch


def _on(xb: torch.Tensor, yb: torch.Tensor, task: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    yb = yb.float() if task == "regression" else yb.long()
    return xb.float().to(device, non_blocking=True), yb.to(device, non_blocking=True)


@torch.no_grad()
def _outputs(model: nn.Module, part: tuple | Dataset, splits: Splits, cfg: ExperimentConfig,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's outputs on one split (in eval mode), with the targets."""
    model.eval()
    if isinstance(part, tuple):
        x, y = part
        chunks = ((x[i : i + cfg.batch.eval_size], y[i : i + cfg.batch.eval_size])
                  for i in range(0, len(y), cfg.batch.eval_size))
    else:
        chunks = DataLoader(part, batch_size=cfg.batch.eval_size, num_workers=cfg.parallel.workers)
    outputs, targets = [], []
    for xb, yb in chunks:
        xb, yb = _on(xb, yb, splits.task, device)
        outputs.append(model(xb))
        targets.append(yb)
    model.train()
    return torch.cat(outputs), torch.cat(targets)


def _evaluate(model: nn.Module, part: tuple | Dataset, splits: Splits, loss_fn: LossFn, cfg: ExperimentConfig,
              device: torch.device, threshold: float | None = None) -> dict[str, float]:
    """Loss (mean over examples) and the task's metrics on one split."""
    out, target = _outputs(model, part, splits, cfg, device)
    with torch.no_grad():
        loss = loss_fn(out, target).item()
    if not math.isfinite(loss) or not torch.isfinite(out).all():
        return {"loss": loss}
    return {"loss": loss, **evaluate(splits.task, out, target, splits.target_scale, threshold)}


def _splits(config: ExperimentConfig, data: Dataset | Splits | None) -> Splits:
    if data is None:
        return load_data(config.data)
    if isinstance(data, (TensorSplits, TorchSplits)):
        return data
    if isinstance(data, Dataset):
        return torch_splits(data, config.data)
    raise TypeError(f"data must be a torch Dataset, TensorSplits or TorchSplits, not {type(data).__name__}")


def _length(part: tuple | Dataset) -> int:
    return len(part[1]) if isinstance(part, tuple) else len(part)  # type: ignore[arg-type]


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda was asked for, but torch sees no CUDA device; use auto or cpu")
    return torch.device(name)


@contextmanager
def torch_settings(config: ExperimentConfig) -> Iterator[None]:
    """Thread count and determinism for the run, restored afterwards."""
    with torch_state_kept():
        if config.parallel.threads is not None:
            torch.set_num_threads(config.parallel.threads)
        torch.use_deterministic_algorithms(config.train.deterministic, warn_only=True)
        yield


@contextmanager
def torch_state_kept(rng: bool = False) -> Iterator[None]:
    """torch's process-wide thread count and determinism and, with `rng`, its random state (CPU and CUDA)
    as they were on entry, restored on exit."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if rng else [], enabled=rng):
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
