"""Batch-size policies: the batch size of every epoch, the lr coupled to it, and gradient accumulation."""

from __future__ import annotations

import math
from collections.abc import Callable

from dltune.experiment.sections import BatchConfig
from dltune.registry import Registry

__all__ = ["BATCH_POLICIES", "batch_sizes", "lr_scales", "optimizer_steps"]

# policy(config, epochs) -> examples per forward pass in each epoch
BATCH_POLICIES: Registry[Callable[[BatchConfig, int], list[int]]] = Registry("batch policy")


@BATCH_POLICIES.register("fixed")
def fixed(cfg: BatchConfig, epochs: int) -> list[int]:
    """The same batch size every epoch."""
    return [cfg.size] * epochs


@BATCH_POLICIES.register("grow")
def grow(cfg: BatchConfig, epochs: int) -> list[int]:
    """size × factor^(growths so far): grow the batch instead of decaying the lr (Smith et al. 2017)."""
    return [round(cfg.size * cfg.factor ** _growths(cfg, epoch)) for epoch in range(1, epochs + 1)]


def _growths(cfg: BatchConfig, epoch: int) -> int:
    return sum(1 for e in cfg.grow_at if e <= epoch)


def batch_sizes(cfg: BatchConfig, epochs: int) -> list[int]:
    return BATCH_POLICIES.get(cfg.policy, path="batch.policy")(cfg, epochs)


def lr_scales(cfg: BatchConfig, epochs: int) -> list[float]:
    """The lr multiplier of each epoch: 1, or factor (linear) / √factor (sqrt) per growth (Goyal et al. 2017)."""
    per_growth = {"none": 1.0, "linear": cfg.factor, "sqrt": math.sqrt(cfg.factor)}[cfg.lr_coupling]
    if cfg.policy != "grow":
        return [1.0] * epochs
    return [per_growth ** _growths(cfg, epoch) for epoch in range(1, epochs + 1)]


def optimizer_steps(examples: int, size: int, accumulate: int) -> int:
    """Optimizer steps in an epoch: one per `accumulate` batches, the last one possibly short."""
    return math.ceil(math.ceil(examples / size) / accumulate)
