"""The rows of an ablation's results table: per variant, the metric's mean, spread and test against the baseline."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dltune.experiment.config import path_keys
from dltune.run.metrics import bounds, mean_interval
from dltune.study.records import AblationData, PairResult, Variant

__all__ = ["Row", "compare", "format_changes", "format_value", "rows_to_json"]

BASELINE_CHANGES = "—"


@dataclass(frozen=True)
class Row:
    """One variant's summary over its seeds. Metric values are as stored (accuracy as a fraction);
    statistics that need more runs than there are (std and CI need n ≥ 2) are None."""

    variant: str
    changes: str  # "schedule.name=exponential, schedule.gamma=0.9"; "—" for the baseline
    n: int  # runs with a metric (diverged runs are not counted)
    mean: float | None
    std: float | None  # sample standard deviation (ddof=1)
    ci_low: float | None  # 95% confidence interval of the mean (Student's t, n - 1 degrees of freedom), within
    ci_high: float | None  # the metric's range (metrics.bounds): accuracy stays in [0, 1]
    delta: float | None  # mean - baseline mean
    p_value: float | None  # Welch's t-test against the baseline; None for the baseline or when undefined
    train_seconds: float | None  # mean over the runs with a metric; optimizer steps only
    samples_per_second: float | None  # mean over the runs with a metric
    parameters: int | None  # of the variant's first run
    diverged: int  # runs that ended without a metric
    ci_clipped: bool = False  # the t interval left the metric's range and was cut at its edge (shown "(clipped)")


def format_changes(changes: dict[str, Any]) -> str:
    """"path=value, ..." in the order written; strings bare, booleans as in TOML; "—" when empty. A file or folder
    (config.path_keys: stored absolute) inside the working folder is shown relative to it, as the user wrote it."""
    if not changes:
        return BASELINE_CHANGES
    return ", ".join(f"{path}={format_value(_shown_path(value) if path in path_keys() else value)}"
                     for path, value in changes.items())


def _shown_path(value: Any) -> Any:
    if isinstance(value, str) and os.path.isabs(value):
        relative = os.path.relpath(value)
        return value if relative.startswith("..") else relative
    return value


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def _finite(values: list[float | None]) -> np.ndarray:
    array = np.array([v for v in values if v is not None], dtype=float)
    return array[np.isfinite(array)]


def _mean(values: list[float | None]) -> float | None:
    finite = _finite(values)
    return float(finite.mean()) if finite.size else None


def _welch(a: np.ndarray, b: np.ndarray) -> float | None:
    """Welch's two-sided t-test p-value; None where it is undefined (n < 2; no spread on both sides, where
    scipy returns NaN or, through rounding, a spurious ~0) or meaningless (the same values on both sides:
    a variant that did not change the runs)."""
    if a.size < 2 or b.size < 2 or np.array_equal(np.sort(a), np.sort(b)):
        return None
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return None
    from scipy import stats  # here, not above: a run's start-up does not wait for scipy (about 0.5 s)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero variance: scipy warns and returns NaN
        p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return None if math.isnan(p) else p


def _summary(variant: Variant, runs: list[PairResult], baseline: np.ndarray | None,
             limits: tuple[float | None, float | None]) -> Row:
    scored = [r for r in runs if r.metric is not None and math.isfinite(r.metric)]
    values = np.array([r.metric for r in scored], dtype=float)
    n = int(values.size)
    mean = float(values.mean()) if n else None
    std = ci_low = ci_high = None
    if n >= 2:
        _, std, ci_low, ci_high = mean_interval(values)
        assert ci_low is not None and ci_high is not None
        low, high = limits
        clipped = (low is not None and ci_low < low) or (high is not None and ci_high > high)
        ci_low = ci_low if low is None else max(ci_low, low)
        ci_high = ci_high if high is None else min(ci_high, high)
    else:
        clipped = False
    delta = p_value = None
    if baseline is not None and mean is not None and baseline.size:
        delta = mean - float(baseline.mean())
        p_value = _welch(values, baseline)
    return Row(
        variant=variant.name,
        changes=format_changes(variant.changes),
        n=n,
        mean=mean,
        std=std,
        ci_low=ci_low,
        ci_high=ci_high,
        delta=delta,
        p_value=p_value,
        train_seconds=_mean([r.train_seconds for r in scored]),
        samples_per_second=_mean([r.samples_per_second for r in scored]),
        parameters=runs[0].parameters if runs else None,
        diverged=len(runs) - n,
        ci_clipped=clipped,
    )


def compare(data: AblationData) -> list[Row]:
    """One row per variant, in the ablation's order (the baseline first), each tested against the baseline."""
    rows: list[Row] = []
    baseline: np.ndarray | None = None
    for i, variant in enumerate(data.variants):
        runs = data.of(variant.name)
        rows.append(_summary(variant, runs, None if i == 0 else baseline, bounds(data.metric)))
        if i == 0:
            baseline = _finite([r.metric for r in runs])
    return rows


def rows_to_json(rows: list[Row]) -> list[dict[str, Any]]:
    """The rows as plain dicts for `--json`: non-finite numbers become None."""
    return [{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in asdict(row).items()}
            for row in rows]
