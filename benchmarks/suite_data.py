"""Synthetic tables for the benchmark suite (benchmarks/problems.py): scikit-learn's generators as dltune loaders.

Each function is named in data.name by import path ("suite_data:classification") and returns (x, y): float32
features and int64 class ids or float32 targets, the same for the same seed.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import make_classification, make_friedman1

from dltune.data import read_idx


def classification(rows: int = 10_000, features: int = 30, informative: int = 10, classes: int = 4,
                   flip: float = 0.05, separation: float = 1.0,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`make_classification`: `informative` useful features, as many redundant (their linear mixtures), the rest
    noise; classes `separation` apart (the hypercube's half side); `flip` of the labels drawn at random (label noise
    that no model can learn)."""
    x, y = make_classification(n_samples=rows, n_features=features, n_informative=informative,
                               n_redundant=informative, n_classes=classes, n_clusters_per_class=2, flip_y=flip,
                               class_sep=separation, random_state=seed)
    return x.astype(np.float32), y.astype(np.int64)


def regression(rows: int = 10_000, features: int = 10, noise: float = 1.0,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`make_friedman1`: y = 10 sin(pi x0 x1) + 20 (x2 - 0.5)^2 + 10 x3 + 5 x4 + N(0, noise^2), the other
    features unused; with noise 1.0 the best r2 possible is about 0.96 (y's variance is about 24)."""
    x, y = make_friedman1(n_samples=rows, n_features=features, noise=noise, random_state=seed)
    return x.astype(np.float32), y.astype(np.float32)


def noisy_labels(images: str, labels: str, flip: float = 0.4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An IDX image/label pair with `flip` of the labels replaced by another class drawn at random (symmetric label
    noise, in every split): a network wide enough memorizes the wrong labels late in training."""
    x, y = read_idx(images), read_idx(labels).astype(np.int64)
    rng = np.random.default_rng(seed)
    flipped = rng.random(len(y)) < flip
    classes = int(y.max()) + 1
    y[flipped] = (y[flipped] + rng.integers(1, classes, flipped.sum())) % classes  # never the true class
    return x, y
