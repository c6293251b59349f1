"""Training losses by name, on torch.nn.functional, with the tasks each one fits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dltune.config import LossConfig
from dltune.errors import ConfigError
from dltune.registry import Registry

__all__ = ["LOSSES", "Loss", "build_loss", "resolve_loss_name"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Loss:
    """A loss function of (outputs, targets) and the tasks it applies to."""

    fn: Callable[[LossConfig], LossFn]
    tasks: frozenset[str]


LOSSES: Registry[Loss] = Registry("loss")
_CLASSES = frozenset({"classification", "binary"})
_REGRESSION = frozenset({"regression"})


def _regression(f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[LossConfig], LossFn]:
    # outputs (B, 1) against targets (B,)
    return lambda cfg: lambda out, y: f(out.squeeze(-1), y)


LOSSES.register("cross_entropy", Loss(lambda cfg: F.cross_entropy, _CLASSES))
LOSSES.register("mse", Loss(_regression(F.mse_loss), _REGRESSION))
LOSSES.register("mae", Loss(_regression(F.l1_loss), _REGRESSION))
LOSSES.register("huber", Loss(_regression(F.huber_loss), _REGRESSION))


def resolve_loss_name(cfg: LossConfig, task: str) -> str:
    """loss.name, with "auto" made cross_entropy for classes and mse for regression."""
    if cfg.name == "auto":
        return "mse" if task == "regression" else "cross_entropy"
    return cfg.name


def build_loss(cfg: LossConfig, task: str) -> LossFn:
    """The loss function for `task`; a loss that does not fit the task is a config error."""
    name = resolve_loss_name(cfg, task)
    loss = LOSSES.get(name, path="loss.name")
    if task not in loss.tasks:
        fits = sorted(n for n, entry in LOSSES.items() if task in entry.tasks)
        raise ConfigError(f"loss.name: {name} does not fit a {task} task; use one of: auto, {', '.join(fits)}")
    return loss.fn(cfg)
