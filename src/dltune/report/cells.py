"""The text of the results table's header and cells, shared by the Markdown, terminal and HTML layouts."""

from __future__ import annotations

from dataclasses import dataclass

from dltune.report.tables import Row

__all__ = ["ALPHA", "DELTA", "Column", "cells", "columns", "direction", "is_fraction", "metric_text", "p_text",
           "plural"]

ALPHA = 0.05  # the p-value below which a difference is marked
DELTA = 5  # index of the "Δ vs baseline" column in columns() and cells()
MISSING = "—"
_FRACTIONS = ("accuracy", "f1", "auc")  # metrics stored as fractions, shown as percentages


@dataclass(frozen=True)
class Column:
    name: str
    numeric: bool  # right-aligned


def plural(n: int, noun: str, many: str | None = None) -> str:
    """A count with its noun: plural(1, "seed") is "1 seed", plural(3, "seed") "3 seeds"; `many` for an
    irregular plural."""
    return f"{n:,} {noun if n == 1 else many or noun + 's'}"


def is_fraction(metric: str) -> bool:
    """Whether the metric is a fraction in [0, 1] shown as a percentage ("test.accuracy", "val.macro_f1")."""
    return metric.rsplit(".", 1)[-1].lower().endswith(_FRACTIONS)


def metric_text(value: float | None, metric: str, *, signed: bool = False) -> str:
    """A metric value (or difference) as shown: percent with 2 decimals, else 4 significant digits."""
    if value is None:
        return MISSING
    text = f"{100 * value:+.2f}" if is_fraction(metric) else f"{value:+.4g}"
    if signed:
        return "\u2212" + text[1:] if text.startswith("-") else text  # a true minus, as wide as the plus
    return text.lstrip("+")


def p_text(p: float | None) -> str:
    if p is None:
        return MISSING
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def columns(metric: str) -> list[Column]:
    unit = " (%)" if is_fraction(metric) else ""
    points = " (pp)" if is_fraction(metric) else ""  # percentage points
    return [
        Column("variant", False),
        Column("changes", False),
        Column("n", True),
        Column(f"{metric} mean ± std{unit}", True),
        Column("95% CI", True),
        Column(f"Δ vs baseline{points}", True),
        Column("p (Welch)", True),
        Column("train s", True),
        Column("samples/s", True),
        Column("params", True),
    ]


def direction(row: Row, higher_is_better: bool) -> str | None:
    """"better" or "worse" when the row differs from the baseline with p < ALPHA, else None."""
    if row.p_value is None or row.delta is None or row.p_value >= ALPHA or row.delta == 0:
        return None
    return "better" if (row.delta > 0) == higher_is_better else "worse"


def _seconds(x: float | None) -> str:
    if x is None:
        return MISSING
    return f"{x:,.2f}" if x < 100 else f"{x:,.0f}"


def cells(row: Row, metric: str) -> list[str]:
    """The row's cells, in the order of `columns(metric)`."""
    n = str(row.n) + (f" (+{row.diverged} diverged)" if row.diverged else "")
    spread = metric_text(row.mean, metric)
    if row.mean is not None and row.std is not None:
        spread += f" ± {metric_text(row.std, metric)}"
    ci = MISSING
    if row.ci_low is not None and row.ci_high is not None:
        ci = f"{metric_text(row.ci_low, metric)} – {metric_text(row.ci_high, metric)}"
        ci += " (clipped)" if row.ci_clipped else ""
    delta = MISSING if row.delta is None else ("0" if row.delta == 0 else metric_text(row.delta, metric, signed=True))
    return [
        row.variant,
        row.changes,
        n,
        spread,
        ci,
        delta,
        p_text(row.p_value),
        _seconds(row.train_seconds),
        MISSING if row.samples_per_second is None else f"{row.samples_per_second:,.0f}",
        MISSING if row.parameters is None else f"{row.parameters:,}",
    ]
