"""Regularization: L1 / L2 penalties, decoupled weight decay, DropConnect, gradient clipping, early stopping."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dltune.errors import ConfigError
from dltune.experiment.sections import RegularizationConfig

__all__ = ["DropConnectLinear", "EarlyStopping", "apply_dropconnect", "build_penalty", "clip_gradients",
           "decay_weights", "penalized_weights"]


def penalized_weights(model: nn.Module, include_all: bool = False) -> list[nn.Parameter]:
    """Weight matrices and kernels; biases and normalization scales (1-d) only with `include_all`."""
    return [p for p in model.parameters() if p.requires_grad and (include_all or p.dim() > 1)]


def build_penalty(cfg: RegularizationConfig, model: nn.Module) -> Callable[[], torch.Tensor] | None:
    """A function giving λ1·Σ|w| + λ2·Σw² now, or None when both are 0."""
    if cfg.l1 == 0.0 and cfg.l2 == 0.0:
        return None
    weights = penalized_weights(model, cfg.penalize_all)

    def penalty() -> torch.Tensor:
        total = torch.zeros((), device=weights[0].device)
        for w in weights:
            if cfg.l1:
                total = total + cfg.l1 * w.abs().sum()
            if cfg.l2:
                total = total + cfg.l2 * w.pow(2).sum()
        return total

    return penalty


@torch.no_grad()
def decay_weights(weights: list[nn.Parameter], optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
    """Decoupled weight decay (Loshchilov & Hutter 2019): w ← w − lr·weight_decay·w before the step, for the
    `weights` that train now, each at its own parameter group's lr (transfer.lr_mult gives layer groups their own)."""
    chosen = {id(w) for w in weights if w.requires_grad}
    for group in optimizer.param_groups:
        decayed = [p for p in group["params"] if id(p) in chosen]
        if decayed:
            torch._foreach_mul_(decayed, 1.0 - group["lr"] * weight_decay)


def clip_gradients(model: nn.Module, cfg: RegularizationConfig) -> float | None:
    """Clip gradients as configured; the global L2 norm before clipping (None without clip_norm)."""
    if cfg.clip_value is not None:
        nn.utils.clip_grad_value_(model.parameters(), cfg.clip_value)
    if cfg.clip_norm is not None:
        return float(nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm))
    return None


class DropConnectLinear(nn.Linear):
    """A linear layer that drops each weight with probability p while training (Wan et al. 2013),
    scaling the kept ones by 1/(1−p) so that evaluation uses the plain weights."""

    def __init__(self, linear: nn.Linear, p: float) -> None:
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        self.load_state_dict(linear.state_dict())
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return super().forward(x)
        keep = torch.rand_like(self.weight) >= self.p
        return F.linear(x, self.weight * keep / (1.0 - self.p), self.bias)


def apply_dropconnect(model: nn.Module, p: float) -> int:
    """Swap every hidden nn.Linear (all but the last, the output layer) for DropConnectLinear; returns how many."""
    linears = [(parent, name) for parent in model.modules() for name, child in parent.named_children()
               if type(child) is nn.Linear]
    hidden = linears[:-1]
    if not hidden:
        raise ConfigError("regularization.dropconnect: this model has no hidden linear layers to drop weights of")
    for parent, name in hidden:
        setattr(parent, name, DropConnectLinear(getattr(parent, name), p))
    return len(hidden)


class EarlyStopping:
    """Stop when val.loss has not improved by more than min_delta for `patience` epochs; keep the best weights."""

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        self.patience, self.min_delta = patience, min_delta
        self.best_loss = float("inf")
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, val_loss: float, model: nn.Module) -> bool:
        """Record this epoch; True when training should stop."""
        if val_loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_epoch = val_loss, epoch
            self.best_state = copy.deepcopy(model.state_dict())
            return False
        return epoch - self.best_epoch >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """What it has seen (a checkpoint): the best loss, its epoch and weights."""
        return {"best_loss": self.best_loss, "best_epoch": self.best_epoch, "best_state": self.best_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_loss, self.best_epoch, self.best_state = state["best_loss"], state["best_epoch"], state["best_state"]

    def restore(self, model: nn.Module) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
