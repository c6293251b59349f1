"""Figures of a population-based training search drawn with matplotlib (Agg, imported lazily): the population's
lineage (who copied whom) and the settings each member trained with per epoch.

What each figure shows is computed by `dltune.report.pbt_data` (`lineage`, `schedule_panels`) and only drawn here,
into a Figure made without pyplot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from dltune.report.pbt_data import Lineage, SchedulePanel
from dltune.report.plots import NO_DATA, PALETTE, WIDTH, epoch_axis, new_figure, shared_legend
from dltune.report.tune_data import objective_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["COPY_GID", "plot_lineage", "plot_schedules"]

COPY_GID = "pbt-copy"  # the gid of each copy's arrow: one per segment that copied another member's state
BEST_COLOR, COPY_COLOR, NO_VALUE_COLOR = "#111111", "#555555", "#b0b0b0"
TRACK_WIDTH = 7.0  # points: a segment's bar on its member's track
GAP = 0.04  # epochs left blank at each end of a bar, so that a member's generations read as separate bars


def plot_lineage(info: Lineage) -> Figure:
    """One track per member (y), epochs on x: each segment a bar from its start to its end, coloured by the first
    objective at its end; an arrow from the donor's track to the copier's at every exploit; the best member's
    lineage outlined in black."""
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch

    fig, (ax,) = new_figure(1, "Population lineage: who copied whom")
    fig.set_size_inches(WIDTH, max(3.2, 0.42 * len(info.members) + 2.0))
    scored = [s for s in info.segments if s.value is not None]
    if not info.segments:
        ax.text(0.5, 0.5, "no segment has ended", transform=ax.transAxes, **NO_DATA)
    for s in info.best_path:  # under the segments: a black rim around the lineage's bars
        ax.plot([s.start, s.end], [s.member, s.member], color=BEST_COLOR, linewidth=TRACK_WIDTH + 5,
                solid_capstyle="butt", zorder=1)
    if scored:
        values = np.array([s.value for s in scored], dtype=float)
        # brighter is better in either direction
        cmap = "viridis" if info.direction == "maximize" else "viridis_r"
        low, high = float(values.min()), float(values.max())
        bars = LineCollection([[(s.start + GAP, s.member), (s.end - GAP, s.member)] for s in scored],
                              array=values, cmap=cmap, norm=Normalize(low, high if high > low else low + 1e-9),
                              linewidths=TRACK_WIDTH, capstyle="butt", zorder=2)
        ax.add_collection(bars)
        fig.colorbar(bars, ax=ax, label=f"{objective_label(info.objective)}\nat the segment's end", shrink=0.9,
                     aspect=20, pad=0.01)
    for s in info.segments:
        if s.value is None:  # diverged: no state to go on from
            ax.plot([s.start + GAP, s.end - GAP], [s.member, s.member], color=NO_VALUE_COLOR, linewidth=TRACK_WIDTH / 2,
                    linestyle=(0, (2, 1)), zorder=2)
    for c in info.copies:
        # bent sideways, so that arrows over the same epoch and tracks stay apart
        ax.add_patch(FancyArrowPatch((c.epoch, c.donor), (c.epoch, c.copier), arrowstyle="-|>", mutation_scale=11,
                                     connectionstyle=f"arc3,rad={0.25 if c.copier > c.donor else -0.25}",
                                     color=BEST_COLOR if c.best else COPY_COLOR, linewidth=2.0 if c.best else 1.0,
                                     shrinkA=4, shrinkB=5, zorder=4 if c.best else 3, gid=COPY_GID))
    ax.set_yticks(info.members, [f"member {m}" for m in info.members])
    ax.set_ylim(max(info.members, default=0) + 0.6, min(info.members, default=0) - 0.6)  # member 0 on top
    ax.set_xlim(-0.15, max(info.epochs, 1) + 0.15)
    epoch_axis(ax)
    ax.set_xlabel("epoch (a bar: one member's generation, one trial; an arrow: a copy of a member's state)")
    handles = [Line2D([], [], color=COPY_COLOR, linewidth=1.0, marker=">", markersize=5,
                      label="copied the state of (exploit), then changed settings (explore)")]
    if info.best_path:
        handles.append(Line2D([], [], color=BEST_COLOR, linewidth=TRACK_WIDTH,
                              label=f"the best member's lineage (trial {info.best_number}; best.toml)"))
    if any(s.value is None for s in info.segments):
        handles.append(Line2D([], [], color=NO_VALUE_COLOR, linewidth=TRACK_WIDTH / 2, linestyle=(0, (2, 1)),
                              label="no value (diverged)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False, fontsize=9)
    return fig


def plot_schedules(panels: list[SchedulePanel]) -> Figure:
    """One panel per key of the space: the value each member trained with in each epoch as steps, the best
    member's schedule (best.toml) bold."""
    fig, axes = new_figure(len(panels), "Settings per epoch: each member's, and the best schedule")
    for ax, panel in zip(axes, panels, strict=True):
        for line in panel.lines:
            color = PALETTE[(line.member or 0) % len(PALETTE)]
            ax.step(line.edges, line.values, where="post", color=color, linewidth=1.3, alpha=0.8, label=line.label)
        if panel.best is not None:
            ax.step(panel.best.edges, panel.best.values, where="post", color=BEST_COLOR, linewidth=3.2, zorder=5,
                    label=f"{panel.best.label} (best.toml)")
        if panel.log:
            ax.set_yscale("log")
            _plain_log_labels(ax)
        ax.set_title(panel.key)
        ax.set_ylabel(panel.key + (" (log scale)" if panel.log else ""))
        epoch_axis(ax)
        ax.set_xlabel("epoch (a step: the value in effect during the epoch)")
    shared_legend(fig, axes[0], None)
    return fig


def _plain_log_labels(ax: Axes) -> None:
    """Log-axis ticks labelled 0.01, 0.05, not 10^-2: to_png draws every text as written (no mathtext), and
    matplotlib's default log labels are mathtext."""
    from matplotlib.ticker import LogFormatter

    ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
