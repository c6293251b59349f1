"""Optimizers by name, built on torch.optim."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim.optimizer import ParamsT

from dltune.experiment.sections import OptimConfig
from dltune.registry import Registry

__all__ = ["OPTIMIZERS", "build_optimizer"]

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
