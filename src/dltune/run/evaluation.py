"""A model's outputs and metrics on one split, in eval mode and in chunks of batch.eval_size: what the training loop
reports each epoch and at the end (val, test)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dltune.experiment.config import ExperimentConfig
from dltune.run.assembly import LossFn, Splits, on_device
from dltune.run.metrics import ExtraMetric, evaluate

__all__ = ["evaluate_split", "length", "outputs"]


@torch.no_grad()
def outputs(model: nn.Module, part: tuple | Dataset, splits: Splits, cfg: ExperimentConfig,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's outputs on one split (in eval mode), with the targets."""
    model.eval()
    chunks: Iterable[tuple[Any, Any]]  # (x, y) batches
    if isinstance(part, tuple):
        x, y = part
        chunks = ((x[i : i + cfg.batch.eval_size], y[i : i + cfg.batch.eval_size])
                  for i in range(0, len(y), cfg.batch.eval_size))
    else:
        chunks = DataLoader(part, batch_size=cfg.batch.eval_size, num_workers=cfg.parallel.workers)
    outputs, targets = [], []
    for xb, yb in chunks:
        xb, yb = on_device(xb, yb, splits.task, device)
        outputs.append(model(xb))
        targets.append(yb)
    model.train()
    return torch.cat(outputs), torch.cat(targets)


def evaluate_split(model: nn.Module, part: tuple | Dataset, splits: Splits, loss_fn: LossFn, cfg: ExperimentConfig,
                   device: torch.device, threshold: float | None = None,
                   metrics: Sequence[ExtraMetric] = ()) -> dict[str, float]:
    """Loss (mean over examples), the task's metrics and the user's `metrics` on one split."""
    out, target = outputs(model, part, splits, cfg, device)
    with torch.no_grad():
        loss = loss_fn(out, target).item()
    if not math.isfinite(loss) or not torch.isfinite(out).all():
        return {"loss": loss}
    return {"loss": loss, **evaluate(splits.task, out, target, splits.target_scale, threshold, metrics)}


def length(part: tuple | Dataset) -> int:
    return len(part[1]) if isinstance(part, tuple) else len(part)  # type: ignore[arg-type]
