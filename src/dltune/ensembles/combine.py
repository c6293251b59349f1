"""How members' predictions become one: the methods of `dltune ensemble`, on arrays the members gave on the validation
and test splits. Classification members give probabilities (members, examples, classes); regression members give
predictions (members, examples). Each method is fitted on validation predictions and returns member weights that
sum to 1 (vote: the share of the vote), so that every ensemble is saved and reloaded the same way.

greedy is ensemble selection (Caruana et al., 2004, "Ensemble selection from libraries of models"): start from the
mean of the k members best on validation (k chosen on validation: their "sorted initialization"), then add, with
replacement, the member that lowers the validation loss most, and keep the step that was best. weighted fits the
weights on the validation split by minimizing its log loss (mean squared error for regression) over the simplex,
through a softmax, with scipy.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import softmax

__all__ = ["EPS", "Fitted", "GREEDY_STEPS", "combine", "fit", "log_loss", "squared_error", "vote_fractions"]

EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] in the log loss, as scikit-learn does
GREEDY_STEPS = 25  # members in the ensemble at most, counted with repeats (the initial k and those added)


@dataclass(frozen=True)
class Fitted:
    """A method's result: one weight per member (summing to 1), and how it got there."""

    weights: list[float]
    details: dict


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log probability of the true class; `p` is (examples, classes)."""
    return float(-np.log(np.clip(p[np.arange(len(y)), y], EPS, 1.0)).mean())


def squared_error(pred: np.ndarray, y: np.ndarray) -> float:
    return float(((pred - y) ** 2).mean())


def vote_fractions(outputs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(examples, classes): each class's share of the members' (weighted) votes for their top class."""
    votes = np.zeros(outputs.shape[1:])
    picks = outputs.argmax(axis=2)  # (members, examples)
    for member, weight in enumerate(weights):
        votes[np.arange(outputs.shape[1]), picks[member]] += weight
    return votes / weights.sum()


def combine(outputs: np.ndarray, weights: np.ndarray | list[float], method: str) -> np.ndarray:
    """The ensemble's output: the weighted mean of the members' probabilities (or predictions), or for `vote` the
    share of the vote per class, ties broken by the mean probability (regression: the weighted median)."""
    w = np.asarray(weights, dtype=np.float64)
    if method != "vote":
        return np.tensordot(w / w.sum(), outputs, axes=1)
    if outputs.ndim == 2:  # regression: the median of the members' predictions
        return _weighted_median(outputs, w)
    fractions = vote_fractions(outputs, w)
    return fractions + 1e-6 * np.tensordot(w / w.sum(), outputs, axes=1)  # the mean breaks ties, nothing else


def fit(method: str, val: np.ndarray, y_val: np.ndarray) -> Fitted:
    """Member weights for `method` (mean, vote, weighted, greedy), fitted on the validation outputs `val`."""
    n = len(val)
    if method in ("mean", "vote"):
        return Fitted([1.0 / n] * n, {})
    if method == "weighted":
        return _weighted(val, y_val)
    if method == "greedy":
        return _greedy(val, y_val)
    raise ValueError(f"unknown method {method!r}")


def _loss(combined: np.ndarray, y: np.ndarray) -> float:
    return squared_error(combined, y) if combined.ndim == 1 else log_loss(combined, y)


def _weighted(val: np.ndarray, y: np.ndarray) -> Fitted:
    def objective(theta: np.ndarray) -> float:
        return _loss(np.tensordot(softmax(theta), val, axes=1), y)

    start = np.zeros(len(val))
    found = minimize(objective, start, method="L-BFGS-B")
    weights = softmax(found.x) if found.fun <= objective(start) else softmax(start)
    return Fitted([float(w) for w in weights], {"val_loss": float(min(found.fun, objective(start))),
                                                "iterations": int(found.nit)})


def _greedy(val: np.ndarray, y: np.ndarray) -> Fitted:
    n = len(val)
    losses = [_loss(val[i], y) for i in range(n)]
    ranked = sorted(range(n), key=lambda i: (losses[i], i))
    # sorted initialization (Caruana et al., 2004, §2.1): the mean of the k best, k chosen on validation
    starts = [_loss(val[ranked[:k]].mean(axis=0), y) for k in range(1, n + 1)]
    chosen = ranked[: int(np.argmin(starts)) + 1]
    total = val[chosen].sum(axis=0).astype(np.float64)
    path = [min(starts)]
    for _ in range(GREEDY_STEPS - len(chosen)):
        k = len(chosen)
        trial = [_loss((total + val[i]) / (k + 1), y) for i in range(n)]
        best = int(np.argmin(trial))  # of equals, the first in the source's ranking
        chosen.append(best)
        total = total + val[best]
        path.append(trial[best])
    start = len(chosen) - len(path) + 1  # members in the ensemble at path[0]
    kept = start + int(np.argmin(path))  # the first step at the lowest validation loss
    counts = Counter(chosen[:kept])
    return Fitted([counts[i] / kept for i in range(n)],
                  {"initial": chosen[:start], "picks": chosen[start:kept],
                   "val_loss_by_step": [round(v, 6) for v in path]})


def _weighted_median(pred: np.ndarray, w: np.ndarray) -> np.ndarray:
    order = np.argsort(pred, axis=0)
    sorted_pred = np.take_along_axis(pred, order, axis=0)
    cum = np.cumsum(w[order], axis=0)
    idx = (cum >= cum[-1] / 2).argmax(axis=0)
    return sorted_pred[idx, np.arange(pred.shape[1])]
