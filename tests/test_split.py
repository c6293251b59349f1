"""dltune's seeded splits are index for index scikit-learn's train_test_split, which dltune no longer imports (it
costs every run a second of start-up): plain and stratified, over sizes, seeds and class balances."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from dltune.data.split import split_indices


def reference(y: np.ndarray | None, n: int, size: int, seed: int, stratify: bool) -> tuple[np.ndarray, np.ndarray]:
    """split_indices as it was, through scikit-learn (the same rule for when to stratify)."""
    strata = None
    if stratify and y is not None:
        counts = np.bincount(y)
        if counts[counts > 0].min() >= 2 and size >= len(counts[counts > 0]) and n - size >= len(counts[counts > 0]):
            strata = y
    rest, taken = train_test_split(np.arange(n), test_size=size, random_state=seed, stratify=strata)
    return np.sort(rest), np.sort(taken)


def cases() -> list:
    rng = np.random.default_rng(0)
    params = []
    for case in range(60):
        n = int(rng.integers(4, 400))
        classes = int(rng.integers(2, 12))
        if case % 3 == 0:  # balanced
            y = np.arange(n) % classes
        elif case % 3 == 1:  # skewed, some classes rare or absent
            y = np.minimum(rng.geometric(0.35, n) - 1, classes - 1)
        else:
            y = rng.integers(0, classes, n)
        size = int(rng.integers(1, n))
        params.append(pytest.param(y.astype(np.int64), n, size, int(rng.integers(0, 2**31)), bool(case % 4),
                                   id=f"{case}-n{n}-k{classes}-take{size}"))
    return params


@pytest.mark.parametrize(("y", "n", "size", "seed", "stratify"), cases())
def test_split_indices_match_scikit_learn(y: np.ndarray, n: int, size: int, seed: int, stratify: bool) -> None:
    rest, taken = split_indices(y, n, size, seed, stratify)
    ref_rest, ref_taken = reference(y, n, size, seed, stratify)
    np.testing.assert_array_equal(taken, ref_taken)
    np.testing.assert_array_equal(rest, ref_rest)


def test_the_reference_experiment_split_matches_scikit_learn() -> None:
    # mnist-5k's shape: 5,000 examples, 500 per class; 1,000 for test, then 400 of the 4,000 for validation
    y = np.repeat(np.arange(10), 500)
    rest, taken = split_indices(y, 5000, 1000, 0, True)
    assert [a.tolist() for a in (rest, taken)] == [a.tolist() for a in reference(y, 5000, 1000, 0, True)]
    y_rest = y[rest]
    assert [a.tolist() for a in split_indices(y_rest, 4000, 400, 1, True)] == \
        [a.tolist() for a in reference(y_rest, 4000, 400, 1, True)]


def test_a_split_that_leaves_nothing_is_refused() -> None:
    with pytest.raises(ValueError):
        split_indices(None, 3, 3, 0, False)
