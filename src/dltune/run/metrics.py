"""Evaluation metrics of a task, computed with scikit-learn on a model's outputs, and the choice of a
binary decision threshold on the validation split.

scikit-learn is imported only by the binary and regression metrics: its import costs a run about a second, so
accuracy and macro F1, all that a classification run reports, are counted here with numpy, as scikit-learn
counts them (tests/test_metrics.py compares the two)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dltune.errors import ConfigError, UserCodeError
from dltune.imports import call, load, where

__all__ = ["METRICS", "ExtraMetric", "bounds", "choose_threshold", "evaluate", "extra_metrics", "higher_is_better",
           "mean_interval", "positive_probability"]

# The metrics each task reports, and whether higher is better.
METRICS: dict[str, dict[str, bool]] = {
    "classification": {"accuracy": True, "macro_f1": True},
    "binary": {"accuracy": True, "macro_f1": True, "roc_auc": True},
    "regression": {"mse": False, "mae": False, "r2": True},
}


# The range a metric's values can take: (lowest, highest), None where it is open.
_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "accuracy": (0.0, 1.0), "macro_f1": (0.0, 1.0), "roc_auc": (0.0, 1.0), "r2": (None, 1.0),
    "mse": (0.0, None), "mae": (0.0, None), "loss": (0.0, None),
}


def bounds(path: str) -> tuple[float | None, float | None]:
    """The range of a metric ("test.accuracy" is within [0, 1], "test.r2" at most 1); (None, None) if unknown."""
    return _BOUNDS.get(path.split(".", 1)[-1], (None, None))


@dataclass(frozen=True)
class ExtraMetric:
    """A metric of the user's own, fn(y_true, y_pred) -> float, recorded as val.NAME and test.NAME. y_pred holds
    class ids for classification (after the decision threshold of a binary task) and predictions in the target's
    units for regression. `fn.higher_is_better = False` marks a metric where lower is better."""

    name: str
    fn: Callable[[np.ndarray, np.ndarray], Any]
    higher_is_better: bool
    named: str  # how errors name it: metrics.extra[0] = 'my_metrics:f2'


def extra_metrics(specs: Sequence[str | Callable[..., Any]], folders: Sequence[str] = ()) -> list[ExtraMetric]:
    """metrics.extra resolved: import paths (looked for in `folders` first) or functions given from Python."""
    builtin = {"loss", *(name for table in METRICS.values() for name in table)}
    found: list[ExtraMetric] = []
    for i, spec in enumerate(specs):
        key = f"metrics.extra[{i}]"
        fn = spec if callable(spec) else load(spec, key, folders)
        named = where(key, spec if isinstance(spec, str) else None, None if isinstance(spec, str) else spec)
        name = spec.rpartition(":")[2].rpartition(".")[2] if isinstance(spec, str) else getattr(fn, "__name__", "")
        if not name.isidentifier() or name in builtin or name in {m.name for m in found}:
            raise ConfigError(f"{named}: the name {name!r} is taken (a built-in metric, or another extra); "
                              "name the function otherwise")
        found.append(ExtraMetric(name, fn, bool(getattr(fn, "higher_is_better", True)), named))
    return found


def higher_is_better(path: str, extra: Sequence[ExtraMetric] = ()) -> bool:
    """Whether a metric ("test.accuracy", "val.loss", "r2", or one of `extra`) is better when higher; losses are
    not."""
    name = path.split(".", 1)[-1]
    own = next((m.higher_is_better for m in extra if m.name == name), None)
    return own if own is not None else next((table[name] for table in METRICS.values() if name in table), False)


def positive_probability(outputs: torch.Tensor) -> np.ndarray:
    """P(class 1) from (N, 1) logits of the positive class (bce) or (N, 2) logits (softmax)."""
    out = outputs.detach().float().cpu()
    p = torch.sigmoid(out[:, 0]) if out.shape[1] == 1 else torch.softmax(out, dim=1)[:, 1]
    return p.numpy()


def choose_threshold(rule: str, y: np.ndarray, p: np.ndarray) -> float:
    """The probability threshold that maximizes `rule` on (y, p): f1, balanced_accuracy or youden.

    Balanced accuracy is (TPR + TNR) / 2 = (1 + J) / 2, so it and Youden's J pick the same threshold.
    """
    from sklearn import metrics as skm

    if rule == "f1":
        precision, recall, thresholds = skm.precision_recall_curve(y, p)
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
        return float(thresholds[int(np.argmax(f1))])
    if rule in ("youden", "balanced_accuracy"):
        fpr, tpr, thresholds = skm.roc_curve(y, p)
        finite = np.isfinite(thresholds)
        return float(thresholds[finite][int(np.argmax((tpr - fpr)[finite]))])
    raise ValueError(f"unknown threshold rule {rule!r}")


def evaluate(task: str, outputs: torch.Tensor, targets: torch.Tensor, target_scale: tuple[float, float] = (0.0, 1.0),
             threshold: float | None = None, extra: Sequence[ExtraMetric] = ()) -> dict[str, float]:
    """The task's metrics, then each of `extra` on the same predictions."""
    result, y_true, y_pred = _builtin(task, outputs, targets, target_scale, threshold)
    for metric in extra:
        value = call(metric.fn, metric.named, y_true, y_pred)
        try:
            result[metric.name] = float(value)
        except (TypeError, ValueError):
            raise UserCodeError(f"{metric.named}: returned a {type(value).__name__}, not a number") from None
    return result


def _builtin(task: str, outputs: torch.Tensor, targets: torch.Tensor, target_scale: tuple[float, float],
             threshold: float | None) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Metrics of `outputs` (logits (N, K) or (N, 1), or (N, 1) predictions) against `targets`.

    Regression metrics are in the targets' original units (undoing the normalization). A binary task
    predicts class 1 where P(class 1) >= threshold (default: the larger logit, i.e. 0.5).
    """
    y = targets.detach().cpu().numpy()
    if task in ("regression", "binary"):
        from sklearn import metrics as skm
    if task == "regression":
        mean, std = target_scale
        pred = outputs.detach().float().cpu().squeeze(-1).numpy() * std + mean
        true = y * std + mean
        return {
            "mse": float(skm.mean_squared_error(true, pred)),
            "mae": float(skm.mean_absolute_error(true, pred)),
            "r2": float(skm.r2_score(true, pred)),
        }, true, pred
    n_classes = 2 if task == "binary" else outputs.shape[1]
    if task == "binary":
        p = positive_probability(outputs)
        pred = (p >= (0.5 if threshold is None else threshold)).astype(np.int64)
    else:
        pred = outputs.detach().argmax(dim=1).cpu().numpy()
    result = {"accuracy": accuracy(y, pred), "macro_f1": macro_f1(y, pred, n_classes)}
    if task == "binary":
        result["roc_auc"] = float(skm.roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")
    return result, y, pred


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """The fraction of `pred` equal to `y` (scikit-learn's accuracy_score)."""
    return float(np.average(y == pred))


def macro_f1(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """F1 averaged over the classes 0..n_classes-1, each counting alike; a class neither in `y` nor in `pred`
    scores 0 (scikit-learn's f1_score(average="macro", labels=range(n_classes), zero_division=0))."""
    hits = _class_counts(y[y == pred], n_classes)
    both = _class_counts(y, n_classes) + _class_counts(pred, n_classes)
    f1 = np.zeros(n_classes)  # F1 = 2 tp / (2 tp + fp + fn) = 2 tp / (true + predicted)
    np.divide(2.0 * hits, both, out=f1, where=both > 0)
    return float(np.nanmean(f1))


def _class_counts(values: np.ndarray, n_classes: int) -> np.ndarray:
    """How often each class 0..n_classes-1 occurs in `values`, as floats; other values are not counted."""
    if np.issubdtype(values.dtype, np.integer):
        return np.bincount(values[(values >= 0) & (values < n_classes)], minlength=n_classes).astype(np.float64)
    return np.array([np.count_nonzero(values == k) for k in range(n_classes)], dtype=np.float64)


def mean_interval(values: Sequence[float] | np.ndarray) -> tuple[float, float | None, float | None, float | None]:
    """Mean, sample standard deviation and the 95% Student-t interval of the mean (None for a single value)."""
    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return mean, None, None, None
    from scipy import stats  # here, not above: a run's start-up does not wait for scipy (about 0.5 s)

    std = float(np.std(values, ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / float(np.sqrt(n))
    return mean, std, mean - half, mean + half
