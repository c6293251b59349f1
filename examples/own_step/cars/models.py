"""A model with two kinds of input: numeric features, and two categorical columns through embeddings."""

from __future__ import annotations

import torch
from torch import nn

from cars.data import CYLINDERS, NUMERIC, ORIGINS


class CarModel(nn.Module):
    def __init__(self, embedding: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.cylinders = nn.Embedding(len(CYLINDERS), embedding)
        self.origin = nn.Embedding(len(ORIGINS), embedding)
        self.mlp = nn.Sequential(nn.Linear(len(NUMERIC) + 2 * embedding, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, 1))

    def forward(self, numeric: torch.Tensor, cylinders: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
        # (B, 5) + (B, E) + (B, E) -> (B,) standardized mpg
        features = torch.cat([numeric, self.cylinders(cylinders), self.origin(origin)], dim=1)
        return self.mlp(features).squeeze(1)


def build(embedding: int = 4, hidden: int = 32, dropout: float = 0.0) -> CarModel:
    """With DataLoaders of your own dltune does not know the inputs' shape: it calls build(**model.args)."""
    return CarModel(embedding, hidden, dropout)
