"""Datasets by name → float tensors split train/val/test; a user's torch Dataset through DataLoader."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from dltune.data.idx import read_idx, write_idx
from dltune.data.loaders import batch_bytes, batch_length, is_loaders, loader_splits, to_device
from dltune.data.sources import DATASETS, data_dir
from dltune.data.split import split_arrays, split_indices
from dltune.data.types import Arrays, LoaderSplits, Task, TensorSplits, TorchSplits
from dltune.errors import ConfigError, DataError, UserCodeError
from dltune.experiment.sections import DataConfig
from dltune.imports import call, is_import_path, load, where

__all__ = [
    "DATASETS",
    "Arrays",
    "LoaderSplits",
    "Task",
    "TensorSplits",
    "TorchSplits",
    "batch_bytes",
    "batch_length",
    "data_dir",
    "is_loaders",
    "load_data",
    "loader_splits",
    "read_idx",
    "to_device",
    "torch_splits",
    "write_idx",
]

Splits = TensorSplits | TorchSplits | LoaderSplits


def load_data(cfg: DataConfig, folders: Sequence[str] = (), loader: Callable[..., Any] | None = None) -> Splits:
    """The dataset named by data.name, split and normalized as the config says.

    Your own: data.name = "my_data:load" (looked for in `folders` first) or `loader` from Python is called with
    data.args and returns arrays (x, y), ready TensorSplits, a torch Dataset, or torch DataLoaders; arrays are then
    split, scaled and stratified as the built-in sets are, a Dataset as `torch_splits` does, DataLoaders as
    `loader_splits` does."""
    if loader is not None or is_import_path(cfg.name):
        named = where("data.name", cfg.name, loader)
        fn = loader if loader is not None else load(cfg.name, "data.name", folders)
        return _user_splits(call(fn, named, **cfg.args), cfg, named)
    if cfg.args:
        raise ConfigError(f"data.args: only for a loader of your own (data.name = \"my_data:load\"); {cfg.name} "
                          "takes its settings from [data] keys")
    loader_fn = DATASETS.get(cfg.name, path="data.name")
    return split_arrays(loader_fn(cfg), cfg, cfg.name)


def _user_splits(value: Any, cfg: DataConfig, named: str) -> Splits:
    if isinstance(value, (TensorSplits, TorchSplits, LoaderSplits)):
        return value
    if is_loaders(value):
        return loader_splits(value, cfg, named)
    if isinstance(value, Dataset):
        splits = torch_splits(value, cfg)
        splits.info["source"] = f"{named} (a torch Dataset)"
        return splits
    if isinstance(value, tuple) and len(value) == 2:
        x, y = (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for v in value)
        if x.ndim not in (2, 3, 4) or y.ndim != 1 or len(x) != len(y):
            raise UserCodeError(f"{named}: expected x of shape (N, D), (N, H, W) or (N, C, H, W) and y of shape "
                                f"(N,); got {list(x.shape)} and {list(y.shape)}")
        if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x) or not np.all(np.isfinite(x)):
            raise UserCodeError(f"{named}: x must hold finite real numbers")
        task: Task = "regression" if np.issubdtype(y.dtype, np.floating) else "classification"
        arrays = Arrays(x=x[:, None] if x.ndim == 3 else x, y=y, task=task, source=named,
                        scale=1 / 255 if x.dtype == np.uint8 else 1.0)
        return split_arrays(arrays, cfg, cfg.name)
    raise UserCodeError(f"{named}: returned a {type(value).__name__}; expected arrays (x, y), TensorSplits, a "
                        "torch Dataset or torch DataLoaders")


def torch_splits(
    dataset: Dataset,
    cfg: DataConfig = DataConfig(),  # noqa: B008  (a frozen pydantic model: one shared default is safe)
    *,
    val: Dataset | None = None,
    test: Dataset | None = None,
    task: Task | None = None,
    n_classes: int | None = None,
) -> TorchSplits:
    """Wrap a user's torch Dataset(s) of (x, y) pairs for the training loop.

    Without `test` (and `val`), they are cut from `dataset` by data.test_fraction and
    data.val_fraction with seed data.seed, stratified by the labels. Labels come from a
    `targets` attribute when the dataset has one, else from one pass over it. dltune does
    not normalize a user's Dataset: its own transform should.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise DataError(f"{type(dataset).__name__}: the dataset is empty")
    if cfg.classes is not None or cfg.per_class is not None:
        raise DataError(f"data.classes, data.per_class: not for a torch Dataset ({type(dataset).__name__}); give "
                        "arrays (x, y) or a loader, or keep the classes in your Dataset")
    x0, y0 = dataset[0]
    x0, y0 = torch.as_tensor(x0), torch.as_tensor(y0)
    if task is None:
        task = "regression" if y0.is_floating_point() else "classification"
    labels = None
    n_outputs = 1  # regression
    if task != "regression":
        targets = getattr(dataset, "targets", None)
        labels = np.asarray(targets if targets is not None else [int(dataset[i][1]) for i in range(n)], dtype=np.int64)
        n_outputs = int(n_classes) if n_classes else int(labels.max()) + 1
        task = "binary" if n_outputs == 2 else "classification"
    train_idx = np.arange(n)
    if test is None:
        train_idx, taken = split_indices(labels, n, max(1, round(cfg.test_fraction * n)), cfg.seed, True)
        test = Subset(dataset, taken.tolist())
    if val is None and cfg.val_fraction > 0:
        sub = None if labels is None else labels[train_idx]
        rest, taken = split_indices(sub, len(train_idx), round(cfg.val_fraction * len(train_idx)), cfg.seed + 1, True)
        val = Subset(dataset, train_idx[taken].tolist())
        train_idx = train_idx[rest]
    train = dataset if len(train_idx) == n else Subset(dataset, train_idx.tolist())
    sizes = {"train": len(train), "val": 0 if val is None else len(val), "test": len(test)}  # type: ignore[arg-type]
    counts = None if labels is None else np.bincount(labels[train_idx], minlength=n_outputs).tolist()
    info = {"name": type(dataset).__name__, "source": "torch Dataset (Python API)", "task": task, "sizes": sizes,
            "class_counts": counts,
            "input_shape": list(x0.shape), "normalization": {"method": "none (the Dataset's own transform)"}}
    return TorchSplits(train=train, val=val, test=test, task=task, input_shape=tuple(x0.shape),
                       n_outputs=n_outputs, info=info)
