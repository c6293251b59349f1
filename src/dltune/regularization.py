"""Penalties on the weights added to the loss: λ1·Σ|w| (L1) and λ2·Σw² (L2)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dltune.config import RegularizationConfig

__all__ = ["build_penalty", "penalized_weights"]


def penalized_weights(model: nn.Module) -> list[nn.Parameter]:
    """Weight matrices and kernels; biases and normalization scales (1-d) are left alone."""
    return [p for p in model.parameters() if p.requires_grad and p.dim() > 1]


def build_penalty(cfg: RegularizationConfig, model: nn.Module) -> Callable[[], torch.Tensor] | None:
    """A function giving the current penalty, or None when there is none."""
    if cfg.l1 == 0.0 and cfg.l2 == 0.0:
        return None
    weights = penalized_weights(model)

    def penalty() -> torch.Tensor:
        total = torch.zeros((), device=weights[0].device)
        for w in weights:
            if cfg.l1:
                total = total + cfg.l1 * w.abs().sum()
            if cfg.l2:
                total = total + cfg.l2 * w.pow(2).sum()
        return total

    return penalty
