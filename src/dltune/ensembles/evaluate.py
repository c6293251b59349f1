"""How an ensemble is judged on the test split against its best single member: the task's metric, the log loss,
a paired bootstrap interval of the difference (scipy), and the reliability of its probabilities."""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

from dltune.ensembles.combine import log_loss, squared_error

__all__ = ["BOOTSTRAP_RESAMPLES", "calibration", "paired_difference", "scores"]

BOOTSTRAP_RESAMPLES = 5000


def scores(out: np.ndarray, y: np.ndarray, task: str, target_scale: tuple[float, float] = (0.0, 1.0)) -> dict:
    """accuracy and log loss of probabilities (examples, classes); mse, mae and r2 of regression predictions, in
    the targets' original units."""
    if task == "regression":
        mean, std = target_scale
        pred, true = out * std + mean, y * std + mean
        total = float(((true - true.mean()) ** 2).sum())
        return {"mse": squared_error(pred, true), "mae": float(np.abs(pred - true).mean()),
                "r2": 1.0 - float(((true - pred) ** 2).sum()) / total if total > 0 else float("nan")}
    return {"accuracy": float((out.argmax(axis=1) == y).mean()), "log_loss": log_loss(out, y)}


def paired_difference(ours: np.ndarray, theirs: np.ndarray, y: np.ndarray, task: str,
                      target_scale: tuple[float, float] = (0.0, 1.0), seed: int = 0) -> dict:
    """The ensemble's metric minus the best member's on the same test examples, with a 95% paired bootstrap
    interval: accuracy in points (classification), mean squared error in the targets' units (regression)."""
    if task == "regression":
        std = target_scale[1]
        d = ((ours - y) ** 2 - (theirs - y) ** 2) * std**2
        metric, scale = "mse", 1.0
    else:
        d = (ours.argmax(axis=1) == y).astype(float) - (theirs.argmax(axis=1) == y).astype(float)
        metric, scale = "accuracy", 100.0
    mean = float(d.mean()) * scale
    if np.ptp(d) == 0:  # every example the same difference: nothing to resample
        low = high = mean
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ci = stats.bootstrap((d,), np.mean, n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=0.95,
                                 method="percentile", rng=np.random.default_rng(seed)).confidence_interval
        low, high = float(ci.low) * scale, float(ci.high) * scale
    unit = "points" if metric == "accuracy" else "mse"
    return {"metric": metric, "unit": unit, "difference": mean, "ci_low": low, "ci_high": high,
            "resamples": BOOTSTRAP_RESAMPLES, "examples": len(d)}


def calibration(out: np.ndarray, y: np.ndarray, bins: int = 10) -> dict:
    """The reliability diagram's points: for each confidence bin (the top class's probability), the mean
    confidence, the accuracy and the count; and the expected calibration error (count-weighted |gap|)."""
    confidence = out.max(axis=1)
    correct = out.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        if n == 0:
            continue
        conf, acc = float(confidence[inside].mean()), float(correct[inside].mean())
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "confidence": conf, "accuracy": acc,
                     "count": n})
        ece += n / len(y) * abs(acc - conf)
    return {"bins": rows, "ece": ece}
