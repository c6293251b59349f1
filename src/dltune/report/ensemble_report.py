"""The report of `dltune ensemble`: the ensemble against its members (terminal and HTML), the difference from the
best single member with its paired bootstrap interval, a reliability diagram and the metric against the member
count, in a self-contained page.

What is shown is computed first by small pure functions (`lines`, `cells`, `difference_text`, `reliability`,
`by_count`), then drawn (`plot_reliability`, `plot_members`), then laid out (`render`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dltune.files import write_text
from dltune.report.cells import MISSING, Column, metric_text, plural
from dltune.report.plots import BASELINE_COLOR, NO_DATA, PALETTE, new_figure, to_png
from dltune.report.templating import Cell, InlinePlot, TableRow, header, inline_plot, key_values, render_page

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from rich.table import Table

    from dltune.ensembles.run import EnsembleResult

__all__ = ["Curve", "Line", "Reliability", "by_count", "cells", "columns", "difference_text", "lines",
           "plot_members", "plot_reliability", "publish", "reliability", "render", "terminal_table", "verdict"]

BEST_MARK = "\u2605"  # ★ beside the best single member's name
ENSEMBLE_COLOR, SINGLE_COLOR = PALETTE[0], PALETTE[1]


# --- data ---------------------------------------------------------------------------------------------------------


def _regression(result: EnsembleResult) -> bool:
    return result.task == "regression"


def _metrics(result: EnsembleResult) -> tuple[str, str]:
    """The task's metric (what members are compared on) and the second score the table and plot show."""
    return ("mse", "r2") if _regression(result) else ("accuracy", "log_loss")


def _value(scores: dict[str, Any] | None, key: str) -> float | None:
    v = (scores or {}).get(key)
    return None if v is None or not math.isfinite(v) else float(v)  # r2 is NaN when the targets are constant


@dataclass(frozen=True)
class Line:
    """One row of the table: the ensemble's or a member's scores."""

    name: str
    weight: float | None  # the member's share in the combination; None for the ensemble
    val: dict[str, float] | None
    test: dict[str, float]
    ensemble: bool
    best: bool  # the best single member: best on validation


def lines(result: EnsembleResult) -> list[Line]:
    """The ensemble first, then each member in the source's ranking."""
    n = len(result.members)
    everyone = [b for b in result.by_members if b["k"] == n]  # the same method on all n members: the ensemble
    ensemble = Line(f"ensemble ({result.method})", None, everyone[0]["val"] if everyone else None, result.test,
                    True, False)
    best = result.best_single["name"]
    return [ensemble, *[Line(m["name"], m["weight"], m.get("val") or None, m["test"], False, m["name"] == best)
                        for m in result.members]]


def _label(key: str) -> str:
    return {"accuracy": "accuracy (%)", "log_loss": "log loss", "mse": "mse", "r2": "R²"}[key]


def columns(result: EnsembleResult) -> list[Column]:
    metric, other = _metrics(result)
    return [Column("model", False), Column("weight", True), Column(f"val {_label(metric)}", True),
            Column(f"test {_label(metric)}", True), Column(f"test {_label(other)}", True)]


def cells(result: EnsembleResult, line: Line) -> list[str]:
    """The line's cells, in the order of `columns(result)`; accuracy in percent, the rest to 4 digits."""
    metric, other = _metrics(result)
    name = f"{line.name} {BEST_MARK}" if line.best else line.name
    weight = MISSING if line.weight is None else f"{line.weight:.3f}"
    return [name, weight, metric_text(_value(line.val, metric), metric),
            metric_text(_value(line.test, metric), metric), metric_text(_value(line.test, other), other)]


def _signed(x: float, points: bool) -> str:
    text = f"{x:+.2f}" if points else f"{x:+.4g}"
    return "\u2212" + text[1:] if text.startswith("-") else text  # a true minus, as wide as the plus


def verdict(result: EnsembleResult) -> str:
    """What the interval says: which of the two is better on the test split, or that it cannot tell."""
    d = result.difference
    if d["ci_low"] <= 0 <= d["ci_high"]:
        return "the interval holds 0: no difference shown on these test examples"
    higher_is_better = d["metric"] != "mse"
    return ("the ensemble is better" if (d["ci_low"] > 0) == higher_is_better
            else "the best single member is better")


def difference_text(result: EnsembleResult) -> str:
    """The ensemble's test metric minus the best single member's, with its 95% paired bootstrap interval: accuracy
    in percentage points, mse in the targets' units squared."""
    d = result.difference
    points = d["unit"] == "points"
    unit = " points" if points else ""
    return (f"ensemble − best single ({result.best_single['name']}), test {d['metric']}: "
            f"{_signed(d['difference'], points)}{unit}, 95% paired bootstrap interval "
            f"[{_signed(d['ci_low'], points)}, {_signed(d['ci_high'], points)}] "
            f"({d['resamples']:,} resamples of {plural(d['examples'], 'test example')}): {verdict(result)}")


def _chosen(result: EnsembleResult) -> str:
    if all(m.get("ranked_value") is None for m in result.members):  # an ablation variant's seeds: no ranking
        return result.ranked_by
    return f"ranked by {result.ranked_by}"


def _title(result: EnsembleResult) -> str:
    return f"ensemble: {result.method} of {plural(len(result.members), 'member')}, {_chosen(result)}"


def _notes(result: EnsembleResult) -> list[str]:
    metric, _ = _metrics(result)
    unit = " Accuracy in percent." if metric == "accuracy" else ""
    return [difference_text(result),
            f"{BEST_MARK}: the best single member (best on validation). weight: the member's share in the "
            f"combination (0: left out); val is what weighted and greedy methods fit on, so only test is fair.{unit}"]


@dataclass(frozen=True)
class Reliability:
    """One model's reliability diagram: per confidence bin of the test examples, the mean top-class probability,
    the accuracy and the count; and the expected calibration error (a fraction)."""

    label: str
    confidence: list[float]
    accuracy: list[float]
    centers: list[float]  # the middle of each bin, where its count is drawn
    counts: list[int]
    ece: float


def reliability(result: EnsembleResult) -> list[Reliability]:
    """The best single member's diagram and the ensemble's (none for regression)."""
    shown = []
    for key, label in (("best_single", f"best single ({result.best_single['name']})"), ("ensemble", "ensemble")):
        if key not in result.calibration:
            continue
        bins, ece = result.calibration[key]["bins"], result.calibration[key]["ece"]
        shown.append(Reliability(label, [b["confidence"] for b in bins], [b["accuracy"] for b in bins],
                                 [(b["low"] + b["high"]) / 2 for b in bins], [b["count"] for b in bins], ece))
    return shown


@dataclass(frozen=True)
class Curve:
    """A score of the top-k ensembles against k, in display units (accuracy in percent)."""

    key: str
    k: list[int]
    test: list[float | None]
    val: list[float | None]  # None where there is no validation split
    best_single: float | None  # the best single member's test score: the reference line


def by_count(result: EnsembleResult, key: str) -> Curve:
    """`key` ("accuracy", "log_loss", "mse", "r2") of the same method on the top k members, k = 1..n."""
    scale = 100.0 if key == "accuracy" else 1.0

    def shown(v: float | None) -> float | None:
        return None if v is None else v * scale

    items = sorted(result.by_members, key=lambda b: b["k"])
    return Curve(key, [b["k"] for b in items], [shown(_value(b["test"], key)) for b in items],
                 [shown(_value(b["val"], key)) for b in items], shown(_value(result.best_single["test"], key)))


# --- drawing ------------------------------------------------------------------------------------------------------


def plot_reliability(diagrams: list[Reliability]) -> Figure:
    """Accuracy against confidence per bin, with the diagonal of perfect calibration (left), and the examples per
    bin on a log axis (right)."""
    fig, (ax, count_ax) = new_figure(2, "Reliability on the test split")
    ax.plot([0, 1], [0, 1], linestyle="--", color=BASELINE_COLOR, linewidth=1, label="perfectly calibrated")
    width = 0.1 / (len(diagrams) + 1)  # bars side by side inside a bin of width 0.1
    # the single model's and the ensemble's styles; a page with one diagram takes the first
    for i, (d, color, marker) in enumerate(zip(diagrams, [SINGLE_COLOR, ENSEMBLE_COLOR], "so", strict=False)):
        ax.plot(d.confidence, d.accuracy, marker=marker, color=color, linewidth=1.6, markersize=5,
                label=f"{d.label}: ECE {100 * d.ece:.2f}%")
        offset = (i - (len(diagrams) - 1) / 2) * width
        count_ax.bar([c + offset for c in d.centers], d.counts, width=width, color=color, label=d.label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("mean confidence (the top class's probability)")
    ax.set_ylabel("accuracy")
    ax.set_title("under the diagonal: over-confident", fontsize=10, color="#555555")
    ax.legend(loc="upper left", frameon=False, fontsize=9)
    ax.grid(True, alpha=0.3)
    if diagrams:
        count_ax.set_yscale("log")
        count_ax.legend(loc="upper left", frameon=False, fontsize=9)
    else:
        count_ax.text(0.5, 0.5, "no calibration recorded", transform=count_ax.transAxes, **NO_DATA)
    count_ax.set_xlim(0, 1)
    count_ax.set_xlabel("confidence bin")
    count_ax.set_ylabel("test examples (log scale)")
    count_ax.set_title("where the examples are", fontsize=10, color="#555555")
    count_ax.grid(True, axis="y", alpha=0.3)
    return fig


def _draw_curve(ax: Axes, curve: Curve) -> None:
    from matplotlib.ticker import MaxNLocator

    for values, label, style in ((curve.test, "test", "-"), (curve.val, "validation", "--")):
        shown = [(k, v) for k, v in zip(curve.k, values, strict=True) if v is not None]
        if shown:
            ax.plot(*zip(*shown, strict=True), linestyle=style, marker="o" if label == "test" else "s", markersize=5,
                    color=ENSEMBLE_COLOR if label == "test" else PALETTE[2], linewidth=1.6, label=f"top k, {label}")
    if curve.best_single is not None:
        ax.axhline(curve.best_single, color=BASELINE_COLOR, linestyle=":", linewidth=1.4, label="best single, test")
    if not any(v is not None for v in curve.test):
        ax.text(0.5, 0.5, "nothing measured", transform=ax.transAxes, **NO_DATA)
    better = "down" if curve.key in ("log_loss", "mse") else "up"
    ax.set_title(f"{better} is better", fontsize=10, color="#555555")
    ax.set_xlabel("members (the top k)")
    ax.set_ylabel(_label(curve.key))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.margins(x=0.05, y=0.15)
    ax.grid(True, alpha=0.3)


def plot_members(curves: list[Curve]) -> Figure:
    """Each curve's score against the member count, test and validation, with the best single member's test
    score as a dotted line; one panel per curve."""
    names = " and ".join(_label(c.key).removesuffix(" (%)") for c in curves)
    fig, axes = new_figure(len(curves), f"{names} against the number of members")
    for ax, curve in zip(axes, curves, strict=True):
        _draw_curve(ax, curve)
    axes[0].legend(loc="best", frameon=False, fontsize=9)
    return fig


# --- layout -------------------------------------------------------------------------------------------------------


def terminal_table(result: EnsembleResult) -> Table:
    """The ensemble and its members as a rich Table, the ensemble in bold, the best single member marked; the
    difference with its interval in the caption."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(_title(result)), caption=Text("\n".join(_notes(result))), caption_justify="left")
    for col in columns(result):
        table.add_column(col.name, justify="right" if col.numeric else "left", no_wrap=not col.numeric)
    for line in lines(result):
        table.add_row(*map(Text, cells(result, line)), style="bold" if line.ensemble else None)
    return table


def _rows(result: EnsembleResult) -> list[TableRow]:
    """The ensemble's row, then each member's; each with its run folder as the tooltip."""
    cols = columns(result)
    shown = []
    for line, run_dir in zip(lines(result), [result.out_dir, *[m["run_dir"] for m in result.members]], strict=True):
        tds = [Cell(text, "num" if c.numeric else "name") for c, text in zip(cols, cells(result, line), strict=True)]
        shown.append(TableRow(tds, "ensemble" if line.ensemble else "best" if line.best else None, run_dir))
    return shown


def _calibration(result: EnsembleResult) -> InlinePlot | None:
    diagrams = reliability(result)
    if not diagrams:  # regression
        return None
    return inline_plot(
        "reliability", to_png(plot_reliability(diagrams)),
        "Reliability diagram of the ensemble and the best single member, with the diagonal, and the test examples "
        "per confidence bin",
        "Each point is one bin of test examples, its mean top-class probability against how often that class was "
        "right: points under the diagonal are over-confident, and the ECE in the legend is the count-weighted mean "
        "gap (lower is better).")


def _by_members(result: EnsembleResult) -> InlinePlot:
    metric, other = _metrics(result)
    # regression: R² first, the scale-free score; classification: accuracy, the ranking metric
    curves = [by_count(result, k) for k in ((other, metric) if _regression(result) else (metric, other))]
    first = _label(curves[0].key).removesuffix(" (%)")
    return inline_plot(
        "members", to_png(plot_members(curves)),
        f"{first} of the same method on the top k members against k, test and validation, with the best single "
        "member's test score as a reference line",
        "Each point is the method applied to the k best-ranked members; a solid test curve above the dotted line "
        "of the best single member (below it, for log loss and mse) means combining helped; validation is what "
        "the method fitted, so it flatters.")


def render(result: EnsembleResult) -> str:
    """The report as an HTML document (a string)."""
    difference, note = _notes(result)
    settings = {"source": result.source, "output folder": result.out_dir, "method": result.method,
                "members": _chosen(result), "seconds": f"{result.seconds:.1f}", **result.details}
    return render_page(
        "ensemble.html", title=f"Ensemble: {Path(result.source).name or result.source}", method=result.method,
        task=result.task, members=plural(len(result.members), "member"), chosen=_chosen(result),
        source=result.source, head=header(columns(result)), rows=_rows(result), difference=difference, note=note,
        calibration=_calibration(result), by_members=_by_members(result), settings_items=key_values(settings))


def publish(result: EnsembleResult, out: Path) -> Path:
    """Write out/report.html (atomically) and return its path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return write_text(out / "report.html", render(result))
