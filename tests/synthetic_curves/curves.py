"""A synthetic study for the pruner's tests: a model whose validation accuracy at epoch e is a designed function of
its setting x (model.args.x) and e, trained by dltune's real loop. Each example carries its label and a number u in
[0, 1); the model predicts the label where u < the curve's value and a wrong class elsewhere, so the accuracy on
the examples is the curve's value (to 1/n)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

CURVES = {
    # the epoch-1 leaders (high x) end worst: ranks flip after epoch 1
    "anti": lambda x, e: 0.2 + 0.6 * x if e == 1 else 0.8 - 0.6 * x + 0.01 * e,
    # the ranks hold at every epoch
    "agree": lambda x, e: 0.2 + 0.6 * x + 0.01 * e,
}


def load(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(x, y): x = (label, u) per example, y = the label (2 classes)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    return np.stack([y, rng.random(n)], axis=1).astype(np.float32), y.astype(np.int64)


class Curve(nn.Module):
    """Counts its training steps (one per epoch with a batch of the whole training split) to know its epoch."""

    def __init__(self, curve: str, x: float) -> None:
        super().__init__()
        self.curve, self.x = CURVES[curve], x
        self.weight = nn.Parameter(torch.zeros(1))  # something for the optimizer; its gradient is 0
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # kept in a checkpoint, as a model's state

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.steps += 1
        label, u = inputs[:, 0].long(), inputs[:, 1]
        right = u < self.curve(self.x, max(int(self.steps), 1))
        predicted = torch.where(right, label, 1 - label)
        return nn.functional.one_hot(predicted, 2).float() * 10 + 0 * self.weight


def build(input_shape: tuple[int, ...], n_outputs: int, curve: str = "agree", x: float = 0.5) -> nn.Module:
    return Curve(curve, x)
