"""The cars as torch DataLoaders of dict batches: {"numeric": (B, 5) float, "cylinders": (B,) long,
"origin": (B,) long, "mpg": (B,) float}. The numeric columns and the target are standardized with the training
split's statistics; the step and the evaluation (cars.steps) read the batches."""

from __future__ import annotations

import numpy as np
import torch
from mlxtend.data import autompg_data
from torch.utils.data import DataLoader, Dataset

NUMERIC = [1, 2, 3, 4, 5]  # displacement, horsepower, weight, acceleration, model year
CYLINDERS = [3, 4, 5, 6, 8]  # the values the column takes, as embedding ids 0..4
ORIGINS = [1, 2, 3]  # USA, Europe, Japan


class Cars(Dataset):
    """One car per item, as a dict of tensors."""

    def __init__(self, numeric: np.ndarray, cylinders: np.ndarray, origin: np.ndarray, mpg: np.ndarray) -> None:
        self.numeric = torch.tensor(numeric, dtype=torch.float32)
        self.cylinders = torch.tensor(cylinders, dtype=torch.long)
        self.origin = torch.tensor(origin, dtype=torch.long)
        self.mpg = torch.tensor(mpg, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.mpg)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"numeric": self.numeric[i], "cylinders": self.cylinders[i], "origin": self.origin[i],
                "mpg": self.mpg[i]}


def load(batch_size: int = 32, seed: int = 0) -> tuple[DataLoader, DataLoader, DataLoader]:
    """(train, val, test) DataLoaders: 70 / 15 / 15 % of the cars, cut by `seed`. dltune makes the training loader
    again with batch.size and an order drawn from train.seed."""
    x, y = autompg_data()
    order = np.random.RandomState(seed).permutation(len(y))
    parts = np.split(order, [int(0.7 * len(y)), int(0.85 * len(y))])
    train = parts[0]
    mean, std = x[train][:, NUMERIC].mean(0), x[train][:, NUMERIC].std(0)
    target_mean, target_std = y[train].mean(), y[train].std()

    def cars(rows: np.ndarray) -> Cars:
        return Cars((x[rows][:, NUMERIC] - mean) / std,
                    np.searchsorted(CYLINDERS, x[rows][:, 0]), np.searchsorted(ORIGINS, x[rows][:, 6]),
                    (y[rows] - target_mean) / target_std)

    Cars.mpg_scale = (float(target_mean), float(target_std))  # what cars.steps.predict turns predictions back with
    return tuple(DataLoader(cars(rows), batch_size=batch_size, shuffle=i == 0) for i, rows in enumerate(parts))
