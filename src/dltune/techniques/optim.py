"""Optimizers by name, built on torch.optim."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch.optim.optimizer import ParamsT

from dltune.experiment.sections import ExperimentConfig, OptimConfig
from dltune.registry import Registry

__all__ = ["OPTIMIZERS", "build_optimizer", "changes_at", "lr_factor", "set_changed"]

Factory = Callable[[OptimConfig, ParamsT], torch.optim.Optimizer]
OPTIMIZERS: Registry[Factory] = Registry("optimizer")

# fused=True: one kernel updates every parameter (CPU and CUDA); on a 400k-parameter MLP it cuts Adam's
# update from about 1.2 ms to 0.2 ms per step (benchmarks/bench_loop.py). RMSprop has no fused form.
OPTIMIZERS.register("sgd", lambda c, p: torch.optim.SGD(
    p, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov, weight_decay=c.weight_decay, fused=True))
OPTIMIZERS.register("adam", lambda c, p: torch.optim.Adam(
    p, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay, fused=True))
OPTIMIZERS.register("adamw", lambda c, p: torch.optim.AdamW(
    p, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay, fused=True))
OPTIMIZERS.register("rmsprop", lambda c, p: torch.optim.RMSprop(
    p, lr=c.lr, alpha=c.alpha, eps=c.eps, momentum=c.momentum, weight_decay=c.weight_decay, foreach=True))


def build_optimizer(cfg: OptimConfig, params: ParamsT) -> torch.optim.Optimizer:
    """The optimizer named by optim.name over `params` (parameters, or parameter groups as dicts)."""
    return OPTIMIZERS.get(cfg.name, path="optim.name")(cfg, params)


def changes_at(cfg: ExperimentConfig, epoch: int) -> dict[str, float]:
    """The settings of train.changes in effect in `epoch`: each key's last change at or before it ({} before any)."""
    now: dict[str, float] = {}
    for change in cfg.train.changes:
        if change["epoch"] > epoch:
            break
        now.update({key: value for key, value in change.items() if key != "epoch"})
    return now


def lr_factor(cfg: ExperimentConfig, now: Mapping[str, float]) -> float:
    """What a changed optim.lr multiplies the schedule's lr by (the schedule's scale: Schedule.set_scale)."""
    return float(now.get("optim.lr", cfg.optim.lr)) / cfg.optim.lr


def set_changed(optimizer: torch.optim.Optimizer, now: Mapping[str, float]) -> None:
    """The changed optim.momentum and optim.weight_decay in every parameter group, which the optimizer reads at
    each step (optim.lr goes through the schedule: lr_factor)."""
    for key in ("momentum", "weight_decay"):
        if f"optim.{key}" in now:
            for group in optimizer.param_groups:
                group[key] = float(now[f"optim.{key}"])
