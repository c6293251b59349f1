"""The report of `dltune compress`: one table (Markdown, terminal, HTML) and an accuracy-against-latency plot with
its Pareto front, in a self-contained page.

As in the rest of the package, what is shown is computed first by small pure functions (`pareto_front`,
`speedup`, `times_smaller`, `points`, `cells`), then drawn (`plot_tradeoff`), then laid out (`render`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dltune.files import write_text
from dltune.report.cells import MISSING, Column, is_fraction, metric_text, plural
from dltune.report.plots import BASELINE_COLOR, NO_DATA, PALETTE, new_figure, to_png
from dltune.report.templating import Cell, TableRow, header, inline_plot, key_values, render_page

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from rich.table import Table

    from dltune.compression.run import CompressResult, Row

__all__ = ["Point", "batch_sizes", "cells", "columns", "details_text", "front", "markdown_table", "pareto_front",
           "plot_tradeoff", "points", "publish", "render", "speedup", "terminal_table", "times_smaller"]

FRONT_COLOR = "#d62728"
_COLORS = [c for c in PALETTE if c != FRONT_COLOR]  # the models' colours: red is the front's


# --- data ---------------------------------------------------------------------------------------------------------


def batch_sizes(result: CompressResult) -> list[str]:
    """The batch sizes that latency was measured at, as the keys of `Row.latency`, in the config's order."""
    return [str(b) for b in result.config["batch_sizes"]]


def _largest(result: CompressResult) -> str:
    return max(batch_sizes(result), key=int)


def _median(row: Row, batch: str) -> float | None:
    timed = row.latency.get(batch)
    return None if timed is None else timed["median_ms"]


def speedup(original: Row, row: Row, batch: str) -> float | None:
    """How many times faster `row` runs a batch than the original: the ratio of their median latencies."""
    mine, theirs = _median(row, batch), _median(original, batch)
    return None if mine is None or theirs is None or mine <= 0 else theirs / mine


def times_smaller(original: Row, row: Row) -> float:
    """How many times smaller `row`'s deployed file is than the original's (2.0: half the bytes)."""
    return original.size_bytes / row.size_bytes


def pareto_front(costs: Sequence[tuple[float, float]]) -> list[int]:
    """The indices of the (cost, value) pairs that no other pair dominates, cheapest first (ties: input order).
    A pair dominates another when it costs less and is worth as much or more, or costs the same and is worth more;
    lower cost and higher value are better. Equal pairs do not dominate each other: both stay."""

    def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return (a[0] < b[0] and a[1] >= b[1]) or (a[0] == b[0] and a[1] > b[1])

    front = [i for i, p in enumerate(costs) if not any(dominates(q, p) for q in costs)]
    return sorted(front, key=lambda i: costs[i][0])


def _scale(metric: str) -> float:
    return 100.0 if is_fraction(metric) else 1.0  # accuracy in percent; Row.delta is in these units (points)


@dataclass(frozen=True)
class Point:
    """One row in the trade-off plots, the metric in display units (percent for accuracy)."""

    method: str
    latency_ms: float | None  # median at the largest batch size
    size_bytes: int
    value: float  # the metric's mean over seeds
    std: float | None  # over seeds, where n >= 2
    original: bool
    front: bool  # on the Pareto front of latency against the metric
    size_front: bool  # on the Pareto front of size against the metric

    @property
    def size_kb(self) -> float:
        return self.size_bytes / 1000


def points(result: CompressResult) -> list[Point]:
    """Each row as a point of the plots, with its place on the two Pareto fronts."""
    big, scale = _largest(result), _scale(result.metric)
    rows = result.rows
    medians = {i: m for i, r in enumerate(rows) if (m := _median(r, big)) is not None}  # a model may lack a latency
    timed = list(medians)
    fast = {timed[j] for j in pareto_front([(medians[i], rows[i].metric["mean"]) for i in timed])}
    small = set(pareto_front([(r.size_bytes, r.metric["mean"]) for r in rows]))
    return [Point(r.method, _median(r, big), r.size_bytes, r.metric["mean"] * scale,
                  None if r.metric["std"] is None else r.metric["std"] * scale, i == 0, i in fast, i in small)
            for i, r in enumerate(rows)]


def _ms(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:#.3g}"  # 3 significant digits, trailing zeros kept: 8.00, 0.0450


def columns(result: CompressResult) -> list[Column]:
    fraction = is_fraction(result.metric)
    sizes = batch_sizes(result)
    return [
        Column("method", False), Column("runtime", False), Column("size (bytes)", True), Column("× smaller", True),
        Column("parameters", True),
        *[Column(f"latency b={b} (ms)", True) for b in sizes],
        Column(f"{result.metric} mean ± std{' (%)' if fraction else ''}", True), Column("95% CI", True),
        Column("n", True), Column(f"Δ vs original{' (pp)' if fraction else ''}", True),
        *[Column(f"speedup b={b}", True) for b in sizes],
    ]


def cells(result: CompressResult, row: Row) -> list[str]:
    """The row's cells, in the order of `columns(result)`."""
    original, metric, m = result.rows[0], result.metric, row.metric
    latency = []
    for b in batch_sizes(result):
        t = row.latency.get(b)
        latency.append(MISSING if t is None else f"{_ms(t['median_ms'])} ({_ms(t['min_ms'])}..{_ms(t['max_ms'])})")
    spread = metric_text(m["mean"], metric)
    if m["std"] is not None:
        spread += f" ± {metric_text(m['std'], metric)}"
    ci = MISSING
    if m["ci_low"] is not None and m["ci_high"] is not None:
        ci = f"[{metric_text(m['ci_low'], metric)}, {metric_text(m['ci_high'], metric)}]"
    delta = MISSING if row.delta is None else (
        "0" if row.delta == 0 else metric_text(row.delta / _scale(metric), metric, signed=True))
    speedups = [speedup(original, row, b) for b in batch_sizes(result)]
    return [row.method, row.runtime, f"{row.size_bytes:,}", f"{times_smaller(original, row):.2f}×",
            f"{row.parameters:,}", *latency, spread, ci, str(m["n"]), delta,
            *[MISSING if s is None else f"{s:.2f}×" for s in speedups]]


def details_text(row: Row, metric: str) -> list[str]:
    """What matters about how the row's model was made, one short phrase each (none for the original)."""
    d, lines = row.details, []
    if "prune" in d:
        before, after = d["prune"]["parameters_before"], d["prune"]["parameters_after"]
        lines.append(f"structured pruning: {before:,} → {after:,} parameters ({after / before:.1%} kept)")
    if "magnitude" in d:
        zeros, total = d["magnitude"]["zeros"], d["magnitude"]["parameters"]
        lines.append(f"magnitude pruning: {zeros:,} of {total:,} weights at zero ({zeros / total:.1%}), stored sparse")
    if "distill" in d:
        s = d["distill"]
        student = ", ".join(f"{k} = {v}" for k, v in s["student"].items())
        lines.append(f"distilled into {{{student}}}: temperature {s['temperature']:g}, α {s['alpha']:g}, "
                     f"{s['epochs']} epochs")
    if d.get("int8_mode"):
        choice = d.get("int8_choice") or {}
        measured = ", ".join(f"{mode} {_ms(ms)} ms" for mode, ms in choice.items())
        lines.append(f"int8 {d['int8_mode']}" + (f" (measured at the largest batch: {measured})" if measured else ""))
    if d.get("onnx_max_difference") is not None:
        lines.append(f"ONNX export: largest |ONNX − torch| output {d['onnx_max_difference']:.2g}")
    if len(row.per_seed) > 1:
        lines.append(f"{metric} per seed: {', '.join(metric_text(v, metric) for v in row.per_seed)}")
    return lines


def front(result: CompressResult) -> list[Point]:
    """The Pareto front of latency at the largest batch size against the metric, fastest first."""
    return sorted((p for p in points(result) if p.front), key=lambda p: p.latency_ms or 0.0)


def _front_items(result: CompressResult) -> list[str]:
    scale, unit = _scale(result.metric), "%" if is_fraction(result.metric) else ""
    return [f"{p.method} ({_ms(p.latency_ms or 0.0)} ms, {metric_text(p.value / scale, result.metric)}{unit})"
            for p in front(result)]


def _notes(result: CompressResult) -> list[str]:
    cfg, big = result.config, _largest(result)
    points_note = " (percentage points)" if is_fraction(result.metric) else ""
    return [
        f"Latency: ms per call on one batch, median (min..max) of {cfg['rounds']} timed rounds on "
        f"{plural(cfg['threads'], 'thread')}, the models taking turns. Speedup: the original's median over "
        "the row's. Size: the deployed file (sparse for magnitude pruning); × smaller: the original's bytes over "
        "the row's.",
        f"{result.metric}: mean ± std over n seeds, 95% CI of the mean by Student's t (n ≥ 2); Δ: the mean minus "
        f"the original's{points_note}.",
        f"Pareto front (latency at batch {big} against {result.metric}): " + (", ".join(_front_items(result)) or
                                                                                "none"),
    ]


# --- drawing ------------------------------------------------------------------------------------------------------


def _draw_points(ax: Axes, shown: list[Point], key: str, colors: dict[str, str]) -> None:
    spread: str | None = "± std over seeds"
    for i, p in enumerate(shown):
        x, color = getattr(p, key), colors[p.method]
        if p.std is not None:
            ax.errorbar([x], [p.value], yerr=[p.std], fmt="none", ecolor=color, elinewidth=1.2, capsize=4, zorder=2,
                        label=spread)
            spread = None  # one legend entry
        ax.scatter([x], [p.value], s=220 if p.original else 55, marker="*" if p.original else "o", color=color,
                   edgecolor="#222222", linewidth=0.6, zorder=3, label="original" if p.original else None)
        # labels above and below by turns: models of the same size or speed stay legible
        ax.annotate(p.method, (x, p.value), textcoords="offset points", xytext=(7, 6 if i % 2 == 0 else -13),
                    fontsize=8.5, color="#333333")


def plot_tradeoff(info: list[Point], metric_label: str, batch: str) -> Figure:
    """The metric against latency at `batch` (left) and against size on disk (right), both on log axes, one labeled
    point per model (error bar: std over seeds), the original as a star, each panel's Pareto front as a step line."""
    from matplotlib.ticker import LogFormatter

    fig, (lat_ax, size_ax) = new_figure(2, f"{metric_label} against latency and size")
    colors = {p.method: BASELINE_COLOR if p.original else _COLORS[(i - 1) % len(_COLORS)] for i, p in enumerate(info)}
    panels = ((lat_ax, "latency_ms", "front", f"latency at batch {batch} (ms, log scale)"),
              (size_ax, "size_kb", "size_front", "size on disk (kB, log scale)"))
    for ax, key, on_front, xlabel in panels:
        shown = [p for p in info if getattr(p, key) is not None]
        _draw_points(ax, shown, key, colors)
        best = sorted((p for p in shown if getattr(p, on_front)), key=lambda p: getattr(p, key))
        if best:  # a step: the best metric reachable at each cost
            xs, ys = [getattr(p, key) for p in best], [p.value for p in best]
            ax.step(xs, ys, where="post", color=FRONT_COLOR, linewidth=1.4, alpha=0.8, zorder=1, label="Pareto front")
            ax.scatter(xs, ys, s=170, facecolor="none", edgecolor=FRONT_COLOR, linewidth=1.3, zorder=4)
        if shown:
            ax.set_xscale("log")
            for axis_formatter in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
                # plain numbers (2, 30, 400), on some minor ticks too: the data span a decade or two
                axis_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
        else:
            ax.text(0.5, 0.5, "nothing measured", transform=ax.transAxes, **NO_DATA)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric_label)
        ax.margins(0.12)  # room for the labels at the edges
        ax.grid(True, which="both", alpha=0.25)
    lat_ax.set_title("left is faster, up is better", fontsize=10, color="#555555")
    size_ax.set_title("left is smaller, up is better", fontsize=10, color="#555555")
    lat_ax.legend(loc="best", frameon=False, fontsize=9)
    return fig


# --- layout -------------------------------------------------------------------------------------------------------


def markdown_table(result: CompressResult) -> str:
    """The results as a GitHub Markdown table, the original first, numbers right-aligned."""
    cols = columns(result)
    lines = ["| " + " | ".join(c.name for c in cols) + " |",
             "|" + "|".join("---:" if c.numeric else "---" for c in cols) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in cells(result, row)) + " |"
              for row in result.rows]
    return "\n".join(lines) + "\n"


def terminal_table(result: CompressResult) -> Table:
    """The results as a rich Table; the rows on the Pareto front in bold."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(f"compress: {result.source}"), caption=Text("\n".join(_notes(result))),
                  caption_justify="left")
    for col in columns(result):
        table.add_column(col.name, justify="right" if col.numeric else "left", no_wrap=col.name == "method",
                         overflow="fold")
    on_front = {p.method for p in front(result)}
    for row in result.rows:
        table.add_row(*map(Text, cells(result, row)), style="bold" if row.method in on_front else None)
    return table


def _css_class(i: int, col: Column) -> str:
    if i == 0:
        return "method"
    if col.name.startswith("latency"):
        return "num latency"  # the median on one line, its range on the next where the page is narrow
    return "num" if col.numeric else "text"


def _rows(result: CompressResult) -> list[TableRow]:
    """The results table's rows; those on the Pareto front marked."""
    cols, on_front = columns(result), {p.method for p in front(result)}
    shown = []
    for row in result.rows:
        tds = [Cell(text, _css_class(i, c)) for i, (c, text) in enumerate(zip(cols, cells(result, row), strict=True))]
        shown.append(TableRow(tds, "front", "on the Pareto front") if row.method in on_front else TableRow(tds))
    return shown


def render(result: CompressResult) -> str:
    """The report as an HTML document (a string)."""
    big, label = _largest(result), result.metric + (" (%)" if is_fraction(result.metric) else "")
    plot = inline_plot("tradeoff", to_png(plot_tradeoff(points(result), label, big)),
                       f"Scatter plots of {result.metric} against latency at batch {big} and against size on disk, "
                       "with the Pareto front",
                       "One point per model; star: the original; error bars: std over seeds; red steps and rings: the "
                       "Pareto front, the models that no other one beats (none is faster, or smaller, and at least as "
                       "good).")
    details = [(r.method, ", ".join(Path(f).name for f in r.folders), details_text(r, result.metric) or [MISSING])
               for r in result.rows]
    return render_page(
        "compress.html", title=f"Compression: {Path(result.source).name}", metric=result.metric,
        source=result.source, compressed=plural(len(result.rows) - 1, "compressed model"),
        batch_sizes=batch_sizes(result), batch=big, head=header(columns(result)), rows=_rows(result),
        notes=_notes(result)[:2], plot=plot, front=_front_items(result), details=details,
        config=key_values(result.config), out_dir=result.out_dir)


def publish(result: CompressResult, out: Path) -> tuple[Path, Path]:
    """Write out/report.html and out/results.md (each atomically) and return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    markdown = write_text(out / "results.md", markdown_table(result) + "\n" + "\n\n".join(_notes(result)) + "\n")
    return write_text(out / "report.html", render(result)), markdown
