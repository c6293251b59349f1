"""The ablation report as one self-contained HTML file: table, plots, environment and config, nothing external.
Laid out by templates/ablation.html."""

from __future__ import annotations

from pathlib import Path

from dltune.errors import mask_password
from dltune.files import write_text
from dltune.report import plots
from dltune.report.cells import ALPHA, DELTA, cells, columns, direction, is_fraction, plural
from dltune.report.tables import Row, format_changes
from dltune.report.templating import Cell, InlinePlot, TableRow, inline_plot, key_values, render_page
from dltune.study.records import AblationData

__all__ = ["render", "write_report"]


def _head(data: AblationData) -> list[Cell]:
    # a short name stays on one line: its spaces become no-break spaces
    return [Cell(c.name if len(c.name) > 10 else c.name.replace(" ", "\u00a0"), "num" if c.numeric else None)
            for c in columns(data.metric)]


def _row(data: AblationData, row: Row, color: str) -> TableRow:
    """A variant's cells: its name after a square of its plots' colour, the Δ marked where p < 0.05, and in
    cumulative mode the full set of changes as the changes cell's tooltip."""
    applied = {v.name: v.applied for v in data.variants}
    name, *texts = cells(row, data.metric)
    shown = [Cell(name, "variant", swatch=color)]
    for i, (col, text) in enumerate(zip(columns(data.metric)[1:], texts, strict=True), start=1):
        classes = ["num"] if col.numeric else [col.name]
        if col.name == "n":
            classes.append("n")
        title = None
        if col.name == "changes" and data.mode == "cumulative" and applied.get(row.variant):
            title = "applied: " + format_changes(applied[row.variant])
        if i == DELTA and row.delta is not None:
            classes.append("delta")
            mark = direction(row, data.higher_is_better)
            if mark:
                classes += ["sig", mark]
                title = f"p < {ALPHA:g}: {mark} than the baseline"
        shown.append(Cell(text, " ".join(classes), title))
    return TableRow(shown)


def _plots(data: AblationData, rows: list[Row]) -> list[InlinePlot]:
    n = len(data.seeds)
    return [
        inline_plot("learning-curves", plots.to_png(plots.learning_curves(data)),
                    "Learning curves: train loss, validation loss and validation metric per epoch for each variant",
                    f"Mean over up to {plural(n, 'seed')} per epoch; the shaded band spans the lowest to the highest "
                    "seed."),
        inline_plot("schedules", plots.to_png(plots.schedules(data)),
                    "Learning rate (log scale) and batch size per epoch for each variant",
                    "The learning rate at the start of each epoch; the band is its range within the epoch for "
                    "schedules that step every batch."),
        inline_plot("metric", plots.to_png(plots.metric_bars(data, rows)),
                    f"Bar chart of {data.metric} per variant with 95% confidence intervals and the baseline as a "
                    "dashed line",
                    "Bars: mean; whiskers: 95% CI of the mean; dots: single seeds; dashed line: the baseline's mean."),
    ]


def render(data: AblationData, rows: list[Row]) -> str:
    """The report as an HTML document (a string)."""
    colors = plots.variant_colors([v.name for v in data.variants])
    return render_page(
        "ablation.html", title=f"Ablation: {data.study}", metric=data.metric,
        higher_is_better=data.higher_is_better, mode=data.mode, percent=is_fraction(data.metric),
        seeds=plural(len(data.seeds), "seed"), seed_list=", ".join(str(s) for s in data.seeds),
        variants=plural(len(data.variants), "variant"), diverged=any(r.diverged for r in rows),
        head=_head(data), rows=[_row(data, r, colors.get(r.variant, "#999")) for r in rows],
        plots=_plots(data, rows), environment=key_values(data.environment),
        config=mask_password(data.config_toml.strip()))  # a tracking URI's password: ***


def write_report(data: AblationData, rows: list[Row], path: str | Path) -> Path:
    """Write the report to `path` (folders created) and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, render(data, rows))  # atomically: a full disk leaves the old report, or none
