"""Per-epoch series of an ablation, summarised over seeds: the data behind the report's plots."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from dltune.study.records import AblationData, PairResult

__all__ = ["BAND", "Curve", "curve", "epoch_value", "lr_range", "scored_runs", "seed_values", "val_metric"]

BAND = "min–max over seeds"  # what a curve's band spans, for legends


class Curve(NamedTuple):
    """One variant's series: epochs (1-based) where at least one seed has a value, the mean over those
    seeds, and the band (min..max over the same seeds)."""

    epochs: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray


def epoch_value(record: dict[str, Any], key: str) -> float | None:
    """A finite number from one epoch's record by dotted path ("train.loss", "val.accuracy", "lr"), else None."""
    value: Any = record
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def scored_runs(data: AblationData, variant: str) -> list[PairResult]:
    """The variant's runs that ended with a metric: diverged runs would stretch every axis with their blow-up."""
    return [r for r in data.of(variant) if r.metric is not None and math.isfinite(r.metric)]


def _by_epoch(runs: list[PairResult], key: str) -> dict[int, list[float]]:
    values: dict[int, list[float]] = {}
    for run in runs:
        for i, record in enumerate(run.epochs):
            value = epoch_value(record, key)
            if value is not None:
                values.setdefault(int(record.get("epoch", i + 1)), []).append(value)
    return values


def curve(data: AblationData, variant: str, key: str) -> Curve:
    """Mean and min..max band over the variant's scored seeds of `key` per epoch; missing values skipped."""
    values = _by_epoch(scored_runs(data, variant), key)
    epochs = sorted(values)
    return Curve(
        np.array(epochs, dtype=int),
        np.array([np.mean(values[e]) for e in epochs], dtype=float),
        np.array([min(values[e]) for e in epochs], dtype=float),
        np.array([max(values[e]) for e in epochs], dtype=float),
    )


def lr_range(data: AblationData, variant: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epochs, lowest, highest) learning rate within each epoch over the scored seeds, where recorded
    ("lr_range" of per-step schedules); empty arrays otherwise."""
    lows: dict[int, list[float]] = {}
    highs: dict[int, list[float]] = {}
    for run in scored_runs(data, variant):
        for i, record in enumerate(run.epochs):
            bounds = record.get("lr_range")
            if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
                continue
            lo, hi = (epoch_value({"v": b}, "v") for b in bounds)
            if lo is not None and hi is not None:
                epoch = int(record.get("epoch", i + 1))
                lows.setdefault(epoch, []).append(lo)
                highs.setdefault(epoch, []).append(hi)
    epochs = sorted(set(lows) & set(highs))
    return (np.array(epochs, dtype=int), np.array([min(lows[e]) for e in epochs], dtype=float),
            np.array([max(highs[e]) for e in epochs], dtype=float))


def val_metric(data: AblationData) -> str | None:
    """The validation metric to plot: "val.accuracy" for classification, "val.r2" for regression, or None."""
    for run in data.results:
        for record in run.epochs:
            val = record.get("val")
            if isinstance(val, dict):
                for name in ("accuracy", "r2"):
                    if name in val:
                        return f"val.{name}"
    return None


def seed_values(data: AblationData, variant: str) -> list[float]:
    """The metric of each scored run of the variant, by seed."""
    return [float(r.metric) for r in scored_runs(data, variant) if r.metric is not None]
