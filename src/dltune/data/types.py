"""What a dataset yields: raw arrays from a source, and the split tensors the loop trains on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["Arrays", "LoaderSplits", "Task", "TensorSplits", "TorchSplits"]

Task = Literal["classification", "binary", "regression"]


@dataclass(frozen=True)
class Arrays:
    """A source's examples before splitting.

    x: (N, C, H, W) images or (N, D) table, any numeric dtype; `scale` maps it to [0, 1]-ish
    floats (1/255 for 8-bit pixels). y: (N,) integer class ids or float targets.
    """

    x: np.ndarray
    y: np.ndarray
    task: Task
    source: str  # the files or package the examples came from
    scale: float = 1.0
    test: tuple[np.ndarray, np.ndarray] | None = None  # the dataset's own test split, if it ships one
    classes: list[str] | None = None  # names of class ids, where known


@dataclass(frozen=True)
class TensorSplits:
    """In-memory splits: one float tensor each, batched by shuffled indexing."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor] | None
    test: tuple[torch.Tensor, torch.Tensor]
    task: Task
    input_shape: tuple[int, ...]  # one example: (C, H, W) or (D,)
    n_outputs: int  # classes, or 1 for regression
    info: dict[str, Any] = field(default_factory=dict)  # name, sizes, normalization: recorded in the run
    target_scale: tuple[float, float] = (0.0, 1.0)  # regression: y_original = y * std + mean


@dataclass(frozen=True)
class TorchSplits:
    """A user's torch Datasets, read through torch.utils.data.DataLoader."""

    train: Dataset
    val: Dataset | None
    test: Dataset
    task: Task
    input_shape: tuple[int, ...]
    n_outputs: int
    info: dict[str, Any] = field(default_factory=dict)
    target_scale: tuple[float, float] = (0.0, 1.0)


@dataclass(frozen=True)
class LoaderSplits:
    """A user's DataLoaders, whose batches only the user's step (model.step) and evaluation (model.predict) read.
    dltune knows neither the inputs' shape nor the number of outputs: a model factory of the user's own is called
    with model.args alone."""

    train: DataLoader
    val: DataLoader | None
    test: DataLoader
    task: Task  # data.task; what model.predict's outputs and targets are scored as
    input_shape: tuple[int, ...] = ()
    n_outputs: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    target_scale: tuple[float, float] = (0.0, 1.0)
