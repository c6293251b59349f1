"""A user's data loader: scikit-learn's 8x8 digits as images."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits


def load(limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """dltune calls load(**[data.args]) and splits, scales and stratifies what it returns: (x, y) with x of shape
    (N, H, W) (images; a channel is added) and integer class ids y."""
    digits = load_digits()
    x, y = digits.images.astype(np.float32), digits.target.astype(np.int64)
    return (x[:limit], y[:limit]) if limit else (x, y)
