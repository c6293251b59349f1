"""The training step and the evaluation dltune calls with our model and our dict batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cars.data import Cars


def step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The batch's mean loss: squared error in standardized mpg."""
    predicted = model(batch["numeric"], batch["cylinders"], batch["origin"])
    return F.mse_loss(predicted, batch["mpg"])


def predict(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(predictions, targets) in miles per gallon: what [loss] (mse) and the regression metrics (mse, mae, r2)
    read on the validation and test splits."""
    mean, std = Cars.mpg_scale
    predicted = model(batch["numeric"], batch["cylinders"], batch["origin"])
    return predicted * std + mean, batch["mpg"] * std + mean
