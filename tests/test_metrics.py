"""The metrics that dltune counts itself (accuracy and macro F1, so that a classification run does not import
scikit-learn) against scikit-learn's, to the last bit: with absent classes, unpredicted classes, float labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from dltune.run.metrics import accuracy, evaluate, macro_f1


def cases() -> list:
    rng = np.random.default_rng(1)
    params = []
    for case in range(40):
        n = int(rng.integers(1, 300))
        k = int(rng.integers(2, 15))
        y = rng.integers(0, k, n)
        pred = np.where(rng.random(n) < rng.random(), y, rng.integers(0, k, n))  # from chance to perfect
        if case % 4 == 1:
            pred = np.minimum(pred, k // 2)  # some classes never predicted
        if case % 4 == 2:
            y = np.minimum(y, k - 2)  # a class never true
        params.append(pytest.param(y, pred, k, id=f"{case}-n{n}-k{k}"))
    return params


@pytest.mark.parametrize(("y", "pred", "k"), cases())
def test_accuracy_and_macro_f1_equal_scikit_learn(y: np.ndarray, pred: np.ndarray, k: int) -> None:
    assert accuracy(y, pred) == float(skm.accuracy_score(y, pred))
    expected = float(skm.f1_score(y, pred, average="macro", labels=np.arange(k), zero_division=0))
    assert macro_f1(y, pred, k) == expected
    assert macro_f1(y.astype(np.float32), pred, k) == expected  # labels as floats, e.g. a bce target


def test_a_class_in_neither_scores_zero() -> None:
    y, pred = np.array([0, 0, 1]), np.array([0, 1, 1])
    assert macro_f1(y, pred, 3) == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)


@pytest.mark.parametrize("task", ["classification", "binary"])
def test_evaluate_reports_scikit_learns_values(task: str) -> None:
    torch.manual_seed(0)
    k = 2 if task == "binary" else 7
    outputs, targets = torch.randn(500, k), torch.randint(0, k, (500,))
    result = evaluate(task, outputs, targets)
    y, pred = targets.numpy(), outputs.argmax(1).numpy()
    assert result["accuracy"] == skm.accuracy_score(y, pred)
    assert result["macro_f1"] == skm.f1_score(y, pred, average="macro", labels=np.arange(k), zero_division=0)
