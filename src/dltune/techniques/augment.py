"""Batch-level image augmentation as tensor operations on the whole batch: random shifts, small
rotations and Gaussian noise (no torchvision; affine_grid and grid_sample do the resampling)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from dltune.errors import ConfigError
from dltune.experiment.sections import RegularizationConfig

__all__ = ["build_augment"]

Augment = Callable[[torch.Tensor], torch.Tensor]


def build_augment(cfg: RegularizationConfig, input_shape: tuple[int, ...], seed: int | torch.Generator
                  ) -> Augment | None:
    """A function that augments a batch (B, C, H, W), or None when regularization.augment is empty. It draws from
    `seed`: a generator (the training loop's, which a checkpoint saves), or a seed for one of its own."""
    if not cfg.augment:
        return None
    if len(input_shape) != 3:
        raise ConfigError(f"regularization.augment: needs image data (C, H, W); this dataset has "
                          f"{input_shape[0]} tabular features")
    # its own stream: same seed, same augmentations
    generator = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    _, h, w = input_shape
    kinds = set(cfg.augment)

    def augment(x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if kinds & {"shift", "rotate"}:
            angle = torch.zeros(b)
            shift = torch.zeros(b, 2)
            if "rotate" in kinds:
                angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(cfg.rotate_degrees)
            if "shift" in kinds:
                shift = (torch.rand(b, 2, generator=generator) * 2 - 1) * cfg.shift_pixels
            cos, sin = angle.cos(), angle.sin()
            # affine_grid maps output to input coordinates in [-1, 1]: a pixel is 2/W wide
            theta = torch.stack([torch.stack([cos, -sin, shift[:, 0] * 2 / w], 1),
                                 torch.stack([sin, cos, shift[:, 1] * 2 / h], 1)], 1).to(x)  # (B, 2, 3)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if "noise" in kinds:
            x = x + cfg.noise_std * torch.randn(x.shape, generator=generator).to(x)
        return x

    return augment
