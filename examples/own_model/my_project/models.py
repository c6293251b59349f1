"""A small residual CNN with BatchNorm: the kind of model a user brings."""

from __future__ import annotations

from torch import nn


class Residual(nn.Module):
    """x + F(x), F = conv-BN-ReLU-conv-BN; the sum goes through a ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(x + self.body(x))


def build(input_shape: tuple[int, ...], n_outputs: int, channels: int = 16, blocks: int = 1,
          dropout: float = 0.0) -> nn.Module:
    """dltune calls build(input_shape, n_outputs, **[model.args]); input_shape is one example, (C, H, W)."""
    if len(input_shape) != 3:
        raise ValueError(f"needs images (C, H, W), got input shape {input_shape}")
    c = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(c, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
        *(Residual(channels) for _ in range(blocks)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, n_outputs))
