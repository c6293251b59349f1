"""Evaluation metrics of a task, computed with scikit-learn on a model's outputs."""

from __future__ import annotations

import numpy as np
import torch
from sklearn import metrics as skm

__all__ = ["METRICS", "evaluate"]

# The metrics each task reports, and whether higher is better.
METRICS: dict[str, dict[str, bool]] = {
    "classification": {"accuracy": True, "macro_f1": True},
    "binary": {"accuracy": True, "macro_f1": True, "roc_auc": True},
    "regression": {"mse": False, "mae": False, "r2": True},
}


def evaluate(task: str, outputs: torch.Tensor, targets: torch.Tensor,
             target_scale: tuple[float, float] = (0.0, 1.0)) -> dict[str, float]:
    """Metrics of `outputs` (logits (N, K), or (N, 1) predictions) against `targets`.

    Regression metrics are in the targets' original units (undoing the normalization).
    """
    out = outputs.detach().float().cpu()
    y = targets.detach().cpu().numpy()
    if task == "regression":
        mean, std = target_scale
        pred = out.squeeze(-1).numpy() * std + mean
        true = y * std + mean
        return {
            "mse": float(skm.mean_squared_error(true, pred)),
            "mae": float(skm.mean_absolute_error(true, pred)),
            "r2": float(skm.r2_score(true, pred)),
        }
    pred = out.argmax(dim=1).numpy()
    result = {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "macro_f1": float(skm.f1_score(y, pred, average="macro", labels=np.arange(out.shape[1]), zero_division=0)),
    }
    if task == "binary":
        positive = torch.softmax(out, dim=1)[:, 1].numpy()
        result["roc_auc"] = float(skm.roc_auc_score(y, positive)) if len(np.unique(y)) == 2 else float("nan")
    return result
