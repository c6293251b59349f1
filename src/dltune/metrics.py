"""Evaluation metrics of a task, computed with scikit-learn on a model's outputs, and the choice of a
binary decision threshold on the validation split."""

from __future__ import annotations

import numpy as np
import torch
from sklearn import metrics as skm

__all__ = ["METRICS", "choose_threshold", "evaluate", "higher_is_better", "positive_probability"]

# The metrics each task reports, and whether higher is better.
METRICS: dict[str, dict[str, bool]] = {
    "classification": {"accuracy": True, "macro_f1": True},
    "binary": {"accuracy": True, "macro_f1": True, "roc_auc": True},
    "regression": {"mse": False, "mae": False, "r2": True},
}


def higher_is_better(path: str) -> bool:
    """Whether a metric ("test.accuracy", "val.loss", "r2") is better when higher; losses are not."""
    name = path.split(".", 1)[-1]
    return next((table[name] for table in METRICS.values() if name in table), False)


def positive_probability(outputs: torch.Tensor) -> np.ndarray:
    """P(class 1) from (N, 1) logits of the positive class (bce) or (N, 2) logits (softmax)."""
    out = outputs.detach().float().cpu()
    p = torch.sigmoid(out[:, 0]) if out.shape[1] == 1 else torch.softmax(out, dim=1)[:, 1]
    return p.numpy()


def choose_threshold(rule: str, y: np.ndarray, p: np.ndarray) -> float:
    """The probability threshold that maximizes `rule` on (y, p): f1, balanced_accuracy or youden.

    Balanced accuracy is (TPR + TNR) / 2 = (1 + J) / 2, so it and Youden's J pick the same threshold.
    """
    if rule == "f1":
        precision, recall, thresholds = skm.precision_recall_curve(y, p)
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
        return float(thresholds[int(np.argmax(f1))])
    if rule in ("youden", "balanced_accuracy"):
        fpr, tpr, thresholds = skm.roc_curve(y, p)
        finite = np.isfinite(thresholds)
        return float(thresholds[finite][int(np.argmax((tpr - fpr)[finite]))])
    raise ValueError(f"unknown threshold rule {rule!r}")


def evaluate(task: str, outputs: torch.Tensor, targets: torch.Tensor,
             target_scale: tuple[float, float] = (0.0, 1.0), threshold: float | None = None) -> dict[str, float]:
    """Metrics of `outputs` (logits (N, K) or (N, 1), or (N, 1) predictions) against `targets`.

    Regression metrics are in the targets' original units (undoing the normalization). A binary task
    predicts class 1 where P(class 1) >= threshold (default: the larger logit, i.e. 0.5).
    """
    y = targets.detach().cpu().numpy()
    if task == "regression":
        mean, std = target_scale
        pred = outputs.detach().float().cpu().squeeze(-1).numpy() * std + mean
        true = y * std + mean
        return {
            "mse": float(skm.mean_squared_error(true, pred)),
            "mae": float(skm.mean_absolute_error(true, pred)),
            "r2": float(skm.r2_score(true, pred)),
        }
    n_classes = 2 if task == "binary" else outputs.shape[1]
    if task == "binary":
        p = positive_probability(outputs)
        pred = (p >= (0.5 if threshold is None else threshold)).astype(np.int64)
    else:
        pred = outputs.detach().argmax(dim=1).cpu().numpy()
    result = {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "macro_f1": float(skm.f1_score(y, pred, average="macro", labels=np.arange(n_classes), zero_division=0)),
    }
    if task == "binary":
        result["roc_auc"] = float(skm.roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")
    return result
