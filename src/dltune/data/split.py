"""Seeded, stratified train/val/test splits and normalization with training-split statistics."""

from __future__ import annotations

import numpy as np
import torch

from dltune.data.types import Arrays, Task, TensorSplits
from dltune.errors import DataError
from dltune.experiment.sections import DataConfig

__all__ = ["resolve_task", "split_arrays", "split_indices"]

Pair = tuple[np.ndarray, np.ndarray]  # (x, y) of one split


def resolve_task(arrays: Arrays, wanted: str) -> tuple[Task, np.ndarray, np.ndarray | None, list[str] | None]:
    """The task, with class labels mapped to ids 0..K-1 (also in the shipped test split)."""
    task = arrays.task if wanted == "auto" else wanted
    y, y_test = arrays.y, arrays.test[1] if arrays.test is not None else None
    if task == "regression":
        if not np.issubdtype(y.dtype, np.number):
            raise DataError(f"{arrays.source}: task regression needs numeric targets, got {y.dtype}")
        return "regression", y.astype(np.float32), None if y_test is None else y_test.astype(np.float32), None
    if np.issubdtype(y.dtype, np.floating) and not np.all(np.mod(y, 1) == 0):
        raise DataError(f"{arrays.source}: task {task} needs class labels, but the targets are fractional numbers")
    values = np.unique(y if y_test is None else np.concatenate([y, y_test]))
    if task == "binary" and len(values) != 2:
        raise DataError(f"{arrays.source}: task binary needs 2 classes, found {len(values)}")
    if len(values) < 2:
        raise DataError(f"{arrays.source}: classification needs at least 2 classes, found {len(values)}")
    ids = np.searchsorted(values, y).astype(np.int64)
    test_ids = None if y_test is None else np.searchsorted(values, y_test).astype(np.int64)
    names = arrays.classes or [str(v) for v in values]
    return ("binary" if len(values) == 2 else "classification"), ids, test_ids, names


def split_indices(y: np.ndarray | None, n: int, size: int, seed: int, stratify: bool) -> tuple[np.ndarray, np.ndarray]:
    """(rest, taken): `size` indices of range(n) taken at random, stratified by y when it can be."""
    idx = np.arange(n)
    strata = None
    if stratify and y is not None:
        counts = np.bincount(y)
        if counts[counts > 0].min() >= 2 and size >= len(counts[counts > 0]) and n - size >= len(counts[counts > 0]):
            strata = y
    rest, taken = _shuffle_split(n, size, seed, strata)
    return np.sort(idx[rest]), np.sort(idx[taken])


def _shuffle_split(n: int, size: int, seed: int, strata: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(rest, taken) positions of scikit-learn's `train_test_split(range(n), test_size=size, random_state=seed,
    stratify=strata)` (ShuffleSplit, or StratifiedShuffleSplit with its approximate mode), unsorted.

    The same draws from the same RandomState, so every split is index for index the one scikit-learn makes
    (tests/test_split.py compares them); written here because importing scikit-learn costs a run about a second
    of start-up. `strata` must hold every class at least twice, and `size` and n - size at least one per class.
    """
    n_rest = n - size
    if size < 1 or n_rest < 1:
        raise ValueError(f"cannot take {size} of {n} examples and leave some")
    rng = np.random.RandomState(seed)
    if strata is None:
        permutation = rng.permutation(n)
        return permutation[size:], permutation[:size]
    _, class_of, class_counts = np.unique(strata, return_inverse=True, return_counts=True)
    # positions of each class in order, classes in sorted order
    class_positions = np.split(np.argsort(class_of, kind="stable"), np.cumsum(class_counts)[:-1])
    rest_counts = _approximate_mode(class_counts, n_rest, rng)
    taken_counts = _approximate_mode(class_counts - rest_counts, size, rng)
    rest: list[int] = []
    taken: list[int] = []
    for positions, r, t in zip(class_positions, rest_counts, taken_counts, strict=True):
        shuffled = positions.take(rng.permutation(len(positions)), mode="clip")
        rest.extend(shuffled[:r])
        taken.extend(shuffled[r:r + t])
    # scikit-learn shuffles both lists once more; the caller sorts them, so those draws are left out
    return np.asarray(rest, dtype=np.int64), np.asarray(taken, dtype=np.int64)


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of `n_draws` to take from each class in proportion to `class_counts`: the floors, then one more
    for the classes with the largest remainders, ties broken by `rng` (scikit-learn's `_approximate_mode`)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            add_now = min(len(tied), need_to_add)
            floored[rng.choice(tied, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def split_arrays(arrays: Arrays, cfg: DataConfig, name: str) -> TensorSplits:
    """Float tensors split train/val/test, normalized with statistics of the training split only."""
    if 0 in arrays.x.shape[1:]:
        raise DataError(f"{arrays.source}: examples of shape {list(arrays.x.shape[1:])} hold no values")
    task, y, y_test, classes = resolve_task(arrays, cfg.task)
    stratify = task != "regression"
    train: Pair = (arrays.x, y)
    test = (arrays.test[0], y_test) if arrays.test is not None and y_test is not None else None
    if cfg.classes is not None:
        task, train, kept, classes = _keep_classes(cfg, task, *train, classes, arrays.source)
        if test is not None:
            test = _relabelled(*test, kept)
    train, test = _limited(cfg, train, test, stratify)
    train, val, test = _held_out(arrays.source, cfg, train, test, stratify)
    x, y = train
    if cfg.per_class is not None:
        x, y = _per_class(x, y, cfg.per_class, cfg.seed, classes)

    mean, std = _statistics(_floats(x, arrays.scale), cfg.normalize)
    target_scale = (0.0, 1.0)
    if task == "regression" and cfg.normalize == "standard":
        target_scale = (float(y.mean(dtype=np.float64)), float(y.std(dtype=np.float64)) or 1.0)

    def tensors(xs: np.ndarray, ys: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.from_numpy((_floats(xs, arrays.scale) - mean) / std)
        if task == "regression":
            return features, torch.from_numpy((ys - target_scale[0]) / target_scale[1]).float()
        return features, torch.from_numpy(ys)

    train_t = tensors(x, y)
    info = {
        "name": name,
        "source": arrays.source,
        "task": task,
        "sizes": {"train": len(x), "val": 0 if val is None else len(val[0]), "test": len(test[0])},
        "input_shape": list(train_t[0].shape[1:]),
        "classes": classes,
        "class_counts": None if classes is None else np.bincount(y, minlength=len(classes)).tolist(),
        "normalization": {
            "method": cfg.normalize,
            "scale": arrays.scale,
            "mean": np.asarray(mean, dtype=np.float64).ravel().round(6).tolist(),  # float64: x 1e6 of 3e38 fits
            "std": np.asarray(std, dtype=np.float64).ravel().round(6).tolist(),
        },
        "split_seed": cfg.seed,
    }
    if task == "regression":
        info["target_scale"] = {"mean": target_scale[0], "std": target_scale[1]}
    return TensorSplits(
        train=train_t,
        val=None if val is None else tensors(*val),
        test=tensors(*test),
        task=task,
        input_shape=tuple(train_t[0].shape[1:]),
        n_outputs=1 if classes is None else len(classes),  # classes: None for regression only
        info=info,
        target_scale=target_scale,
    )


def _limited(cfg: DataConfig, train: Pair, test: Pair | None, stratify: bool) -> tuple[Pair, Pair | None]:
    """data.limit: a stratified subset of the examples, the same share of the training examples and of the shipped
    test split (at least one of it)."""
    total = len(train[0]) + (0 if test is None else len(test[0]))
    if cfg.limit is None or cfg.limit >= total:
        return train, test
    keep = cfg.limit / total
    train = _subset(*train, round(keep * len(train[0])), cfg.seed, stratify)
    if test is not None:
        test = _subset(*test, max(1, round(keep * len(test[0]))), cfg.seed, stratify)
    return train, test


def _held_out(source: str, cfg: DataConfig, train: Pair, test: Pair | None, stratify: bool
              ) -> tuple[Pair, Pair | None, Pair]:
    """(train, val, test): the test split cut from the examples by data.test_fraction unless the dataset ships
    one, then the validation split cut from what is left by data.val_fraction (none at 0)."""
    x, y = train
    if test is None:
        n_test = max(1, round(cfg.test_fraction * len(x)))
        _leaves_some(source, len(x), n_test, "data.test_fraction")
        rest, taken = split_indices(y if stratify else None, len(x), n_test, cfg.seed, stratify)
        x, y, test = x[rest], y[rest], (x[taken], y[taken])
    val = None
    n_val = round(cfg.val_fraction * len(x))
    if n_val > 0:
        _leaves_some(source, len(x), n_val, "data.val_fraction")
        rest, taken = split_indices(y if stratify else None, len(x), n_val, cfg.seed + 1, stratify)
        val = (x[taken], y[taken])
        x, y = x[rest], y[rest]
    if len(x) == 0:
        raise DataError(f"{source}: no training examples left after the test and validation splits")
    return (x, y), val, test


def _statistics(x_train: np.ndarray, normalize: str) -> tuple[np.ndarray | np.float32, np.ndarray | np.float32]:
    """(mean, std) that the features are standardized with: of the training split for "standard" (one mean for
    all pixels of an image, one per column of a table), else (0, 1)."""
    if normalize != "standard":
        return np.float32(0.0), np.float32(1.0)
    is_image = x_train.ndim == 4
    axes = None if is_image else 0
    mean = x_train.mean(axis=axes, keepdims=not is_image, dtype=np.float64).astype(np.float32)
    std = x_train.std(axis=axes, keepdims=not is_image, dtype=np.float64).astype(np.float32)
    return mean, np.where(std > 0, std, np.float32(1.0))


def _leaves_some(source: str, n: int, size: int, key: str) -> None:
    if size >= n:
        raise DataError(f"{source}: {key} takes {size} of the {n} examples and leaves none to train on")


def _keep_classes(cfg: DataConfig, task: Task, x: np.ndarray, y: np.ndarray, names: list[str] | None, source: str
                  ) -> tuple[Task, Pair, list[int], list[str]]:
    """data.classes: the examples of those classes only, relabelled 0..k-1 in the order given. A class is named by
    its id (the labels sorted: digit k of MNIST is k) or its name."""
    if task == "regression" or names is None:
        raise DataError("data.classes: keeps classes of a classification task; this one is a regression")
    kept = []
    for entry in cfg.classes or ():
        if isinstance(entry, int) and 0 <= entry < len(names):
            kept.append(entry)
        elif isinstance(entry, str) and entry in names:
            kept.append(names.index(entry))
        else:
            raise DataError(f"data.classes: {entry!r} is not a class of {source}; its classes: "
                            f"{', '.join(names)} (by name, or by id 0 to {len(names) - 1})")
    if len(set(kept)) < len(kept):
        raise DataError(f"data.classes: a class listed twice: {list(cfg.classes or ())}")
    wanted = cfg.task if cfg.task != "auto" else ("binary" if len(kept) == 2 else "classification")
    return wanted, _relabelled(x, y, kept), kept, [names[i] for i in kept]


def _relabelled(x: np.ndarray, y: np.ndarray, kept: list[int]) -> tuple[np.ndarray, np.ndarray]:
    new_id = np.full(max(int(y.max()), *kept) + 1, -1, dtype=np.int64)
    new_id[kept] = np.arange(len(kept))
    labels = new_id[y]
    keep = labels >= 0
    return x[keep], labels[keep]


def _per_class(x: np.ndarray, y: np.ndarray, n: int, seed: int, names: list[str] | None
               ) -> tuple[np.ndarray, np.ndarray]:
    """data.per_class: n training examples of each class, drawn with data.seed."""
    if names is None:
        raise DataError("data.per_class: keeps examples per class of a classification task; this one is a regression")
    rng = np.random.default_rng(seed)
    taken = []
    for c in range(len(names)):
        where = np.flatnonzero(y == c)
        if len(where) < n:
            raise DataError(f"data.per_class = {n}: class {names[c]} has {len(where)} training examples")
        taken.append(rng.choice(where, size=n, replace=False))
    order = np.sort(np.concatenate(taken))
    return x[order], y[order]


def _subset(x: np.ndarray, y: np.ndarray, size: int, seed: int, stratify: bool) -> tuple[np.ndarray, np.ndarray]:
    if size >= len(x):
        return x, y
    _, taken = split_indices(y if stratify else None, len(x), size, seed, stratify)
    return x[taken], y[taken]


def _floats(x: np.ndarray, scale: float) -> np.ndarray:
    out = x.astype(np.float32)
    if scale != 1.0:
        out *= np.float32(scale)
    return out
