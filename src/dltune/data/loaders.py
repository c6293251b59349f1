"""A user's torch DataLoaders, whose batches can be anything the user's step reads (a dict of tensors, a tuple of
several inputs): the splits they make, and the few things dltune does to a batch it does not understand (count its
examples, move its tensors to a device)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from dltune.data.split import split_indices
from dltune.data.types import LoaderSplits, Task
from dltune.errors import DataError
from dltune.experiment.sections import DataConfig

__all__ = ["batch_bytes", "batch_length", "is_loaders", "loader_splits", "to_device"]


def is_loaders(value: Any) -> bool:
    """Whether `value` is a DataLoader, or DataLoaders for train / val / test (a tuple, a list or a dict)."""
    if isinstance(value, DataLoader):
        return True
    parts = list(value.values()) if isinstance(value, Mapping) else value if isinstance(value, (tuple, list)) else []
    return bool(parts) and any(isinstance(p, DataLoader) for p in parts)


def loader_splits(value: Any, cfg: DataConfig, named: str) -> LoaderSplits:
    """The splits of a user's DataLoaders: (train, val, test) or {"train", "val", "test"} as given (val may be None),
    or one DataLoader whose dataset is cut by data.test_fraction and data.val_fraction (seed data.seed; not
    stratified: dltune cannot read the labels of a batch it does not understand), each part read as that loader
    reads. The training loader is made again for each batch size (batch.size, its policy) with its order drawn
    from train.seed; its collate_fn, workers and pin_memory are kept."""
    if isinstance(value, DataLoader):
        train, val, test = _cut(value, cfg, named)
    elif isinstance(value, Mapping):
        unknown = sorted(set(value) - {"train", "val", "test"})
        if unknown or "train" not in value or "test" not in value:
            raise DataError(f"{named}: a dict of DataLoaders needs the keys train, test and (optionally) val; got "
                            f"{', '.join(map(str, value))}")
        train, val, test = value["train"], value.get("val"), value["test"]
    elif len(value) == 3:
        train, val, test = value
    else:
        raise DataError(f"{named}: give DataLoaders as (train, val, test) (val may be None), or one DataLoader to "
                        f"cut by data.test_fraction and data.val_fraction; got {len(value)} of them")
    for part, loader in (("train", train), ("val", val), ("test", test)):
        if not (isinstance(loader, DataLoader) or (part == "val" and loader is None)):
            raise DataError(f"{named}: the {part} part is a {type(loader).__name__}, not a torch DataLoader")
    if isinstance(train.dataset, IterableDataset) or train.batch_size is None:
        raise DataError(f"{named}: the training DataLoader must read a map-style Dataset (with __len__ and "
                        "__getitem__) in batches of batch_size (no batch_sampler): dltune sets the batch size "
                        "(batch.size) and the order (train.seed) of training")
    task: Task = "regression" if cfg.task == "auto" else cfg.task
    sizes = {part: len(loader.dataset) if loader is not None else 0  # type: ignore[arg-type]
             for part, loader in (("train", train), ("val", val), ("test", test))}
    info = {"name": type(train.dataset).__name__, "source": f"{named} (torch DataLoaders)", "task": cfg.task,
            "sizes": sizes, "batches": "your own (model.step reads them)",
            "normalization": {"method": "none (the Dataset's own transform)"}}
    return LoaderSplits(train=train, val=val, test=test, task=task, info=info)


def _cut(loader: DataLoader, cfg: DataConfig, named: str) -> tuple[DataLoader, DataLoader | None, DataLoader]:
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset):
        raise DataError(f"{named}: one DataLoader over an IterableDataset cannot be cut into train, val and test; "
                        "give (train, val, test) DataLoaders")
    n = len(dataset)  # type: ignore[arg-type]
    train_idx, test_idx = split_indices(None, n, max(1, round(cfg.test_fraction * n)), cfg.seed, True)
    val = None
    if cfg.val_fraction > 0:
        rest, taken = split_indices(None, len(train_idx), round(cfg.val_fraction * len(train_idx)), cfg.seed + 1,
                                    True)
        val = _reading(loader, Subset(dataset, train_idx[taken].tolist()))
        train_idx = train_idx[rest]
    return (_reading(loader, Subset(dataset, train_idx.tolist())), val,
            _reading(loader, Subset(dataset, test_idx.tolist())))


def _reading(loader: DataLoader, dataset: Dataset) -> DataLoader:
    """A loader over `dataset` that reads as `loader` does, in order."""
    return DataLoader(dataset, batch_size=loader.batch_size, collate_fn=loader.collate_fn,
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory)


def batch_length(batch: Any) -> int:
    """The examples in a batch: the first dimension of its first tensor (a dict's values in order, a tuple's items)."""
    found = _first_tensor(batch)
    if found is None:
        raise DataError(f"a batch of {type(batch).__name__} holds no tensor; dltune counts a batch's examples by "
                        "the first dimension of its first tensor")
    return int(found.shape[0]) if found.ndim else 1


def batch_bytes(batch: Any) -> int:
    """The bytes of every tensor in a batch."""
    if isinstance(batch, torch.Tensor):
        return batch.numel() * batch.element_size()
    return sum(batch_bytes(item) for item in _items(batch))


def _first_tensor(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, np.ndarray):
        return torch.as_tensor(batch)
    for item in _items(batch):
        found = _first_tensor(item)
        if found is not None:
            return found
    return None


def _items(batch: Any) -> Iterable[Any]:
    """What a batch holds one level down: a dict's values, a tuple's or list's items (a string holds nothing)."""
    if isinstance(batch, Mapping):
        return batch.values()
    return batch if isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)) else ()


def to_device(batch: Any, device: torch.device) -> Any:
    """The batch with every tensor in it on `device` (dicts, tuples, named tuples and lists kept as they are)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({k: to_device(v, device) for k, v in batch.items()})  # type: ignore[call-arg]
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a named tuple
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
