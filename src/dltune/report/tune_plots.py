"""Figures of a hyperparameter search drawn with matplotlib (Agg, imported lazily): history, importances, slices,
Pareto front and the best trials' learning curves.

As in Optuna's `visualization` package, what each figure shows is computed first by a pure function of
`dltune.report.tune_data` (`history`, `importance_bars`, `slices`, `pareto`, `curve_panels`) and only drawn here,
by a `plot_*` function that returns a Figure made without pyplot.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from dltune.report.plots import DPI, NO_DATA, PALETTE, WIDTH, epoch_axis, new_figure, shared_legend
from dltune.report.tune_data import CurvePanel, Front, History, Slice, objective_label, spans_decades

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_curves", "plot_history", "plot_importances", "plot_pareto", "plot_slices"]

TRIAL_COLOR, PRUNED_COLOR, BEST_COLOR = PALETTE[0], "#9a9a9a", "#d62728"


def _grid_figure(n: int, ncols: int, height: float, title: str, *, sharey: bool) -> tuple[Figure, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(WIDTH, height * nrows + 0.6), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False, sharey=sharey).ravel()))
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=13, fontweight="bold")
    return fig, axes[:n]


def _better(direction: str) -> str:
    return "higher is better" if direction == "maximize" else "lower is better"


def plot_history(info: History) -> Figure:
    """Each complete trial's first objective, pruned trials at their last reported value, the best so far."""
    from matplotlib.ticker import MaxNLocator

    fig, (ax,) = new_figure(1, f"Optimization history of {info.objective}")
    ax.scatter(info.numbers, info.values, s=26, color=TRIAL_COLOR, zorder=3, label="complete trial")
    if info.pruned_numbers.size:
        ax.scatter(info.pruned_numbers, info.pruned_values, s=30, marker="x", color=PRUNED_COLOR, zorder=2,
                   label="pruned trial (last reported value)")
    if info.step_numbers.size:
        ax.step(info.step_numbers, info.step_values, where="post", color=BEST_COLOR, linewidth=1.6, zorder=1,
                label="best so far")
    if info.best_numbers.size:
        ax.scatter(info.best_numbers, info.best_values, s=110, facecolor="none", edgecolor=BEST_COLOR,
                   linewidth=1.6, zorder=4, label=info.best_label)
    if not info.numbers.size and not info.pruned_numbers.size:
        ax.text(0.5, 0.5, "no trial reported a value", transform=ax.transAxes, **NO_DATA)
    if spans_decades(np.concatenate([info.values, info.pruned_values])):
        ax.set_yscale("log")
    ax.set_title(_better(info.direction), fontsize=10, color="#555555")
    ax.set_xlabel("trial number")
    ax.set_ylabel(objective_label(info.objective))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    shared_legend(fig, ax, None)
    return fig


def plot_importances(bars: list[tuple[str, float]], objective: str) -> Figure:
    """Horizontal bars of each parameter's importance, the most important on top."""
    fig, (ax,) = new_figure(1, f"Parameter importances for {objective}")
    fig.set_size_inches(WIDTH, max(2.4, 0.42 * len(bars) + 1.4))
    y = np.arange(len(bars))[::-1]
    values = np.array([v for _, v in bars], dtype=float)
    ax.barh(y, values, height=0.6, color=TRIAL_COLOR, alpha=0.85)
    for yi, value in zip(y, values, strict=True):
        ax.text(value, yi, f" {value:.2f}", va="center", fontsize=9)
    ax.set_yticks(y, [name for name, _ in bars])
    ax.set_xlim(0, max(float(values.max(initial=0.0)) * 1.15, 1e-9))
    ax.set_xlabel("importance (share of the objective's variance, Optuna)")
    ax.grid(True, axis="x", alpha=0.3)
    return fig


def plot_slices(info: list[Slice], objective: str) -> Figure:
    """One panel per parameter: the first objective of each complete trial against the value it sampled,
    coloured by trial number."""
    from matplotlib.colors import Normalize

    ncols = len(info) if len(info) <= 4 else math.ceil(len(info) / 2)  # 5 or 6: two rows of 3; 7 or 8: of 4
    fig, axes = _grid_figure(len(info), ncols, 3.0, f"{objective} against each searched parameter",
                             sharey=True)  # one y range: the panels compare how much each parameter matters
    numbers = np.concatenate([s.numbers for s in info])
    norm = Normalize(vmin=float(numbers.min()), vmax=float(max(numbers.max(), numbers.min() + 1)))
    points = None
    for ax, s in zip(axes, info, strict=True):
        x = s.x
        if s.scale == "category":  # spread coinciding points a little, the same way on every render
            x = s.x + ((s.numbers * 0.618) % 1 - 0.5) * 0.3
            crowded = len(s.categories) > 4 or sum(len(c) for c in s.categories) > 88 / ncols  # characters
            ax.set_xticks(range(len(s.categories)), s.categories, rotation=25 if crowded else 0,
                          ha="right" if crowded else "center", fontsize=8.5)
            ax.set_xlim(-0.6, len(s.categories) - 0.4)
        elif s.scale == "log":
            ax.set_xscale("log")
        points = ax.scatter(x, s.y, c=s.numbers, cmap="viridis", norm=norm, s=24, edgecolor="#333333",
                            linewidth=0.4)
        ax.set_xlabel(s.xlabel)
        ax.grid(True, alpha=0.3)
    for i, ax in enumerate(axes):
        if i % ncols == 0:
            ax.set_ylabel(objective_label(objective))
    if points is not None:
        fig.colorbar(points, ax=axes, label="trial number", shrink=0.9, aspect=30)
    return fig


def plot_pareto(info: Front) -> Figure:
    """The first two objectives of every complete trial, the Pareto front highlighted (and joined for two)."""
    (ox, oy), (dx, dy) = info.objectives, info.directions
    fig, (ax,) = new_figure(1, f"Pareto front: {ox} against {oy}")
    ax.scatter(info.x, info.y, s=26, color=TRIAL_COLOR, alpha=0.7, zorder=2, label="complete trial")
    if info.front_numbers.size:
        if info.n_objectives == 2:
            ax.plot(info.front_x, info.front_y, color=BEST_COLOR, linewidth=1.2, alpha=0.7, zorder=3)
        ax.scatter(info.front_x, info.front_y, s=60, color=BEST_COLOR, edgecolor="#222222", linewidth=0.6,
                   zorder=4, label="Pareto front")
        for n, x, y in zip(info.front_numbers, info.front_x, info.front_y, strict=True):
            ax.annotate(f"#{n}", (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8.5, color="#333333")
    if not info.x.size:
        ax.text(0.5, 0.5, "no complete trial", transform=ax.transAxes, **NO_DATA)
    for values, set_scale in ((info.x, ax.set_xscale), (info.y, ax.set_yscale)):
        if spans_decades(values):
            set_scale("log")
    rest = f"; {info.n_objectives - 2} more objective(s) not shown" if info.n_objectives > 2 else ""
    ax.set_title(f"x: {_better(dx)} · y: {_better(dy)}{rest}", fontsize=10, color="#555555")
    ax.set_xlabel(objective_label(ox))
    ax.set_ylabel(objective_label(oy))
    ax.margins(0.07)  # room for the trial numbers at the edges
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", frameon=False, fontsize=9)
    return fig


def plot_curves(panels: list[CurvePanel]) -> Figure:
    """Per-epoch train loss, validation loss and validation metric of each shown trial."""
    fig, axes = new_figure(len(panels), "Learning curves of the best trial" if len(panels[0].lines) == 1
                        else "Learning curves of the Pareto front's trials")
    for ax, panel in zip(axes, panels, strict=True):
        drawn: list[float] = []
        for i, (label, epochs, values) in enumerate(panel.lines):
            if epochs.size:
                ax.plot(epochs, values, label=label, color=PALETTE[i % len(PALETTE)], marker="o", markersize=3.5,
                        linewidth=1.6)
                drawn += list(values)
        label = panel.ylabel
        if not drawn:
            ax.text(0.5, 0.5, "no values recorded", transform=ax.transAxes, **NO_DATA)
        elif label == "loss" and min(drawn) > 0 and max(drawn) / min(drawn) > 10:
            ax.set_yscale("log")
            label = "loss (log scale)"
        ax.set_title(panel.title)
        ax.set_ylabel(label)
        epoch_axis(ax)
    shared_legend(fig, axes[0], None)
    return fig
