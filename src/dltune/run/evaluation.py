"""A model's outputs and metrics on one split, in eval mode and in chunks of batch.eval_size: what the training loop
reports each epoch and at the end (val, test)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dltune.data import batch_length, to_device
from dltune.experiment.config import ExperimentConfig
from dltune.run.assembly import LossFn, Splits, on_device
from dltune.run.metrics import ExtraMetric, evaluate
from dltune.run.precision import Precision
from dltune.run.steps import OwnStep

__all__ = ["evaluate_split", "length", "outputs"]


def _batches(part: tuple | Dataset | DataLoader, splits: Splits, cfg: ExperimentConfig, device: torch.device
             ) -> Iterator[Any]:
    """One split's batches on `device`, in order: (x, y) chunks of batch.eval_size, or the user's DataLoader's."""
    if isinstance(part, DataLoader):  # the user's own batches (LoaderSplits)
        for batch in part:
            yield to_device(batch, device)
        return
    chunks: Iterable[tuple[Any, Any]]  # (x, y) batches
    if isinstance(part, tuple):
        x, y = part
        chunks = ((x[i : i + cfg.batch.eval_size], y[i : i + cfg.batch.eval_size])
                  for i in range(0, len(y), cfg.batch.eval_size))
    else:
        chunks = DataLoader(part, batch_size=cfg.batch.eval_size, num_workers=cfg.parallel.workers)
    for xb, yb in chunks:
        yield on_device(xb, yb, splits.task, device)


def _autocast(precision: Precision | None) -> contextlib.AbstractContextManager[None]:
    return precision.autocast() if precision is not None else contextlib.nullcontext()


@torch.no_grad()
def outputs(model: nn.Module, part: tuple | Dataset | DataLoader, splits: Splits, cfg: ExperimentConfig,
            device: torch.device, own: OwnStep | None = None, precision: Precision | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's outputs on one split (in eval mode), with the targets: model(x) and y, or what the user's
    model.predict returns for each batch. Computed in `precision` (the run's train.precision; None: fp32), the
    outputs given in fp32, where the loss and the metrics read them."""
    model.eval()
    outputs, targets = [], []
    for batch in _batches(part, splits, cfg, device):
        with _autocast(precision):
            if own is not None and own.predict is not None:
                out, target = own.predict(model, batch)
            else:
                out, target = model(batch[0]), batch[1]
        outputs.append(out.float() if out.is_floating_point() else out)
        targets.append(target)
    model.train()
    return torch.cat(outputs), torch.cat(targets)


@torch.no_grad()
def _step_loss(model: nn.Module, part: DataLoader | tuple | Dataset, splits: Splits, cfg: ExperimentConfig,
               device: torch.device, own: OwnStep, precision: Precision | None) -> float:
    """The user's step's loss on one split (in eval mode): the mean over examples of its batches' mean losses."""
    model.eval()
    total, n = torch.zeros((), dtype=torch.float64, device=device), 0
    for batch in _batches(part, splits, cfg, device):
        size = batch_length(batch)
        with _autocast(precision):
            loss = own.step(model, batch)
        total += loss.double() * size
        n += size
    model.train()
    return total.item() / max(n, 1)


def evaluate_split(model: nn.Module, part: tuple | Dataset | DataLoader, splits: Splits, loss_fn: LossFn,
                   cfg: ExperimentConfig, device: torch.device, threshold: float | None = None,
                   metrics: Sequence[ExtraMetric] = (), own: OwnStep | None = None,
                   precision: Precision | None = None) -> dict[str, float]:
    """Loss (mean over examples), the task's metrics and the user's `metrics` on one split, the model computing in
    `precision` (None: fp32) and the loss and metrics in fp32. With a step of the user's own (`own`) and no
    model.predict: its loss alone."""
    if own is not None and own.predict is None:
        return {"loss": _step_loss(model, part, splits, cfg, device, own, precision)}
    out, target = outputs(model, part, splits, cfg, device, own, precision)
    with torch.no_grad():
        loss = loss_fn(out, target).item()
    if not math.isfinite(loss) or not torch.isfinite(out).all():
        return {"loss": loss}
    return {"loss": loss, **evaluate(splits.task, out, target, splits.target_scale, threshold, metrics)}


def length(part: tuple | Dataset | DataLoader) -> int:
    """The examples of one split."""
    if isinstance(part, DataLoader):
        return len(part.dataset)  # type: ignore[arg-type]
    return len(part[1]) if isinstance(part, tuple) else len(part)  # type: ignore[arg-type]
