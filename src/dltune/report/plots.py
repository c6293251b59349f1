"""Figures of an ablation drawn with matplotlib (Agg, imported lazily): learning curves, schedules, metric bars.

Each function only draws what `report.curves` and `report.tables` computed and returns a Figure, made
without pyplot so that no global figure state or GUI backend is touched.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np

from dltune.report.cells import is_fraction
from dltune.report.curves import BAND, curve, lr_range, seed_values, val_metric
from dltune.report.tables import Row
from dltune.run.metrics import bounds
from dltune.study.records import AblationData

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["DPI", "NO_DATA", "PALETTE", "WIDTH", "epoch_axis", "learning_curves", "metric_bars", "new_figure",
           "schedules", "shared_legend", "to_png", "variant_colors"]

DPI = 110
WIDTH, ROW_HEIGHT = 11.0, 4.0  # inches per row of subplots
BASELINE_COLOR = "#404040"
# matplotlib's tab10 without its grey, which the baseline has
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">"]
NO_DATA: dict[str, Any] = {"ha": "center", "va": "center", "color": "#888888"}


def variant_colors(names: list[str]) -> dict[str, str]:
    """A colour per variant, the same in every plot and table: dark grey for the first (the baseline)."""
    return {name: BASELINE_COLOR if i == 0 else PALETTE[(i - 1) % len(PALETTE)] for i, name in enumerate(names)}


def _style(data: AblationData) -> dict[str, dict[str, Any]]:
    names = [v.name for v in data.variants]
    colors = variant_colors(names)
    return {name: {"color": colors[name], "marker": _MARKERS[i % len(_MARKERS)], "markersize": 4, "linewidth": 1.6}
            for i, name in enumerate(names)}


def new_figure(ncols: int, title: str) -> tuple[Figure, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # constrained layout: tight_layout's job, plus room for a legend outside the axes
    fig = Figure(figsize=(WIDTH, ROW_HEIGHT), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(np.atleast_1d(fig.subplots(1, ncols)))
    fig.suptitle(title, fontsize=13, fontweight="bold")
    return fig, axes


def epoch_axis(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)


def shared_legend(fig: Figure, ax: Axes, band: str | None) -> None:
    from matplotlib.patches import Patch

    handles, labels = ax.get_legend_handles_labels()
    if band:
        handles.append(Patch(facecolor="#999999", alpha=0.3))
        labels.append(band)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 6), frameon=False)


def learning_curves(data: AblationData) -> Figure:
    """Train loss, validation loss and the validation metric per epoch: mean over seeds, min..max band."""
    metric = val_metric(data)
    panels = [("train.loss", "train loss", "loss"), ("val.loss", "validation loss", "loss")]
    if metric is not None:
        name = metric.split(".", 1)[1]
        panels.append((metric, f"validation {name}", f"{name} (%)" if is_fraction(metric) else name))
    fig, axes = new_figure(len(panels), "Learning curves")
    style = _style(data)
    for ax, (key, title, label) in zip(axes, panels, strict=True):
        scale = 100.0 if is_fraction(key) else 1.0
        drawn: list[float] = []
        for name in style:
            c = curve(data, name, key)
            if c.epochs.size == 0:
                continue
            ax.plot(c.epochs, c.mean * scale, label=name, **style[name])
            ax.fill_between(c.epochs, c.low * scale, c.high * scale, color=style[name]["color"], alpha=0.15,
                            linewidth=0)
            drawn += list(c.low) + list(c.high)
        if not drawn:
            ax.text(0.5, 0.5, "no values recorded", transform=ax.transAxes, **NO_DATA)
        elif label == "loss" and min(drawn) > 0 and max(drawn) / min(drawn) > 10:
            ax.set_yscale("log")
            label = "loss (log scale)"
        ax.set_title(title)
        ax.set_ylabel(label)
        epoch_axis(ax)
    shared_legend(fig, axes[0], f"band: {BAND}")
    return fig


def schedules(data: AblationData) -> Figure:
    """Each variant's learning rate (log axis; band: its range within the epoch) and batch size per epoch."""
    fig, (lr_ax, batch_ax) = new_figure(2, "Learning rate and batch size")
    style = _style(data)
    ranged = False
    lowest_line, lowest_band = np.inf, np.inf
    for name in style:
        lr = curve(data, name, "lr")
        if lr.epochs.size:
            lr_ax.plot(lr.epochs, lr.mean, label=name, **style[name])
            lowest_line = min(lowest_line, float(lr.mean.min()))
        epochs, low, high = lr_range(data, name)
        if epochs.size:
            lr_ax.fill_between(epochs, low, high, color=style[name]["color"], alpha=0.15, linewidth=0)
            lowest_band = min(lowest_band, float(low.min()))
            ranged = True
        batch = curve(data, name, "batch_size")
        if batch.epochs.size:
            batch_ax.plot(batch.epochs, batch.mean, label=name, **style[name])
    for ax in (lr_ax, batch_ax):
        if not ax.lines:
            ax.text(0.5, 0.5, "no values recorded", transform=ax.transAxes, **NO_DATA)
        epoch_axis(ax)
    if lr_ax.lines:
        lr_ax.set_yscale("log")
        if 0 < lowest_line < np.inf and lowest_band < lowest_line / 20:
            # a band that falls decades below every line (onecycle's last steps) is cut off at the axis
            lr_ax.set_ylim(bottom=lowest_line / 20)
    lr_ax.set_title("learning rate at the start of each epoch")
    lr_ax.set_ylabel("learning rate (log scale)")
    batch_ax.set_title("batch size")
    batch_ax.set_ylabel("examples per step")
    shared_legend(fig, lr_ax, "band: lr range within the epoch" if ranged else None)
    return fig


def metric_bars(data: AblationData, rows: list[Row]) -> Figure:
    """The metric's mean per variant with 95% CI error bars, each seed as a dot, the baseline dashed."""
    fig, (ax,) = new_figure(1, f"{data.metric} by variant")
    scale = 100.0 if is_fraction(data.metric) else 1.0
    colors = variant_colors([v.name for v in data.variants])
    shown = [r for r in rows if r.mean is not None]
    x = np.arange(len(shown))
    means = np.array([r.mean for r in shown], dtype=float) * scale
    # whisker lengths below and above the mean; none for a single run
    low = means - np.array([r.ci_low if r.ci_low is not None else r.mean for r in shown], dtype=float) * scale
    high = np.array([r.ci_high if r.ci_high is not None else r.mean for r in shown], dtype=float) * scale - means
    ax.bar(x, means, width=0.6, color=[colors[r.variant] for r in shown], alpha=0.85,
           yerr=np.vstack([low, high]), capsize=6, error_kw={"elinewidth": 1.4, "ecolor": "#222222"})
    points: list[float] = list(means - low) + list(means + high)
    for i, row in enumerate(shown):
        seeds = np.array(seed_values(data, row.variant)) * scale
        offsets = np.linspace(-0.12, 0.12, seeds.size) if seeds.size > 1 else np.zeros(seeds.size)
        ax.scatter(i + offsets, seeds, s=14, color="white", edgecolor="#222222", linewidth=0.8, zorder=3,
                   label="one seed" if i == 0 else None)
        points += list(seeds)
    if shown and shown[0].variant == data.variants[0].name:
        ax.axhline(means[0], color=BASELINE_COLOR, linestyle="--", linewidth=1.2, label="baseline mean")
    if points:
        lo, hi = min(points), max(points)
        pad = 0.25 * (hi - lo) if hi > lo else max(abs(hi) * 0.01, 1e-6)
        # zoomed: differences matter here, not the distance to 0; never past the metric's range (100% accuracy)
        bottom, top = lo - pad, hi + pad
        low_bound, high_bound = bounds(data.metric)
        if low_bound is not None:
            bottom = max(bottom, low_bound * scale)
        if high_bound is not None:
            top = min(top, high_bound * scale)
        ax.set_ylim(bottom, top)
    else:
        ax.text(0.5, 0.5, "no run produced a metric", transform=ax.transAxes, **NO_DATA)
    ax.set_xticks(x, [r.variant for r in shown], rotation=15 if len(shown) > 5 else 0,
                  ha="right" if len(shown) > 5 else "center")
    unit = " (%)" if scale != 1.0 else ""
    ax.set_ylabel(f"{data.metric}{unit}")
    ax.set_title("mean with 95% CI (Student's t); y axis zoomed, not from 0", fontsize=10, color="#555555")
    ax.grid(True, axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", frameon=False, fontsize=9)
    return fig


def to_png(fig: Figure) -> bytes:
    """The figure as PNG bytes at DPI. Every text is drawn as written: a variant, parameter or model name with two
    `$` in it ("cost $5 vs $10") is not taken for mathtext, which would garble it or fail to parse."""
    from matplotlib import rc_context
    from matplotlib.text import Text

    buffer = io.BytesIO()
    with rc_context({"text.parse_math": False}):  # also for the tick labels that drawing creates
        for text in fig.findobj(Text):
            text.set_parse_math(False)
        fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return buffer.getvalue()
