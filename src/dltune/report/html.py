"""The ablation report as one self-contained HTML file: table, plots, environment and config, nothing external."""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path
from typing import Any

from dltune.files import write_text
from dltune.errors import mask_password
from dltune.study.records import AblationData
from dltune.report import plots
from dltune.report.cells import DELTA, cells, columns, direction, is_fraction, plural
from dltune.report.tables import Row, format_changes

__all__ = ["CSP", "CSS", "environment_list", "figure_block", "page_head", "render", "write_report"]

# Only inline styles and data: images may load, and no script at all; a browser enforces that the file stays
# self-contained. base-uri and form-action, which default-src does not cover: no <base> or form may point elsewhere.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --zebra: #f6f8fa; --good: #1a7f37; --bad: #cf222e; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.5;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 28px 24px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
.meta { color: var(--muted); margin: 0; }
.meta b { color: var(--fg); font-weight: 600; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { padding: 6px 8px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: #eef1f4; font-weight: 600; vertical-align: bottom; }
tbody tr:nth-child(even) { background: var(--zebra); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
td.n { white-space: normal; }
td.changes { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace;
  font-size: 12px; color: #333; }
td.variant { font-weight: 600; white-space: nowrap; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 7px; }
td.sig.better { color: var(--good); font-weight: 700; }
td.sig.worse { color: var(--bad); font-weight: 700; }
td.delta:not(.sig) { color: var(--muted); }
.note { color: var(--muted); font-size: 13.5px; margin: 8px 0 0; }
.read p { margin: 0 0 8px; max-width: 860px; }
figure { margin: 18px 0 26px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 13.5px; margin-top: 6px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; margin: 0; font-size: 14px; }
dt { color: var(--muted); }
dd { margin: 0; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace;
  font-size: 13px; overflow-wrap: anywhere; }
pre { background: var(--zebra); border: 1px solid var(--line); border-radius: 4px; padding: 12px 14px;
  overflow-x: auto; font-size: 13px; line-height: 1.45; }
"""


def _table(data: AblationData, rows: list[Row]) -> str:
    cols = columns(data.metric)
    colors = plots.variant_colors([v.name for v in data.variants])
    applied = {v.name: v.applied for v in data.variants}
    names = [c.name if len(c.name) > 10 else c.name.replace(" ", "\u00a0") for c in cols]  # short: one line
    head = "".join(f'<th class="num">{escape(n)}</th>' if c.numeric else f"<th>{escape(n)}</th>"
                   for c, n in zip(cols, names, strict=True))
    body = []
    for row in rows:
        tds = []
        for i, (col, text) in enumerate(zip(cols, cells(row, data.metric), strict=True)):
            classes = ["num"] if col.numeric else [col.name]
            if col.name == "n":
                classes.append("n")
            attrs = ""
            if i == 0:
                swatch = f'<span class="swatch" style="background:{colors.get(row.variant, "#999")}"></span>'
                tds.append(f'<td class="variant">{swatch}{escape(text)}</td>')
                continue
            if col.name == "changes" and data.mode == "cumulative" and applied.get(row.variant):
                attrs = f' title="{escape("applied: " + format_changes(applied[row.variant]))}"'
            if i == DELTA and row.delta is not None:
                classes.append("delta")
                mark = direction(row, data.higher_is_better)
                if mark:
                    classes += ["sig", mark]
                    attrs = f' title="p &lt; 0.05: {mark} than the baseline"'
            tds.append(f'<td class="{" ".join(classes)}"{attrs}>{escape(text)}</td>')
        body.append(f"<tr>{''.join(tds)}</tr>")
    return (f'<div class="scroll"><table id="results"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _how_to_read(data: AblationData, rows: list[Row]) -> str:
    better = "higher" if data.higher_is_better else "lower"
    unit = " Metric values are percentages; Δ is in percentage points (pp)." if is_fraction(data.metric) else ""
    lines = [
        f"Each variant ran with the same {plural(len(data.seeds), 'seed')}. The table shows the mean ± the sample "
        f"standard deviation over the n runs that produced a metric ({better} is better), and the 95% confidence "
        f"interval of the mean by Student's t with n − 1 degrees of freedom.{unit}",
        "Δ is the variant's mean minus the baseline's; p is from Welch's t-test of the variant's runs against the "
        "baseline's (two-sided, unequal variances). Δ is coloured only where p < 0.05: green when better, red when "
        "worse. A p-value is not an effect size: read Δ and the interval for how much, p only for how surely; "
        "with few seeds, small real effects go undetected.",
        "A variant that cannot change the results — loader workers with in-memory data, say — reproduces the "
        "baseline's runs exactly and shows Δ 0 and no p. train s is the time of the optimizer steps per run; "
        "samples/s the training examples processed per second of it.",
    ]
    if data.mode == "cumulative":
        lines.append("Cumulative mode: each variant applies its changes on top of those of every row above it "
                     "(hover a changes cell for the full set).")
    if any(r.diverged for r in rows):
        lines.append("Diverged runs end without a metric: they are counted apart in n and left out of every "
                     "statistic and plot.")
    return "".join(f"<p>{escape(line)}</p>" for line in lines)


def page_head(title: str, css: str = "") -> str:
    """The opening of a self-contained page: its policy (no outside resource of any kind), title and style."""
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{CSS}{css}</style></head>",
        "<body><main>",
    ])


def figure_block(key: str, png: bytes, alt: str, caption: str) -> str:
    src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="{src}" alt="{escape(alt)}" data-plot="{escape(key)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _plots(data: AblationData, rows: list[Row]) -> str:
    n = len(data.seeds)
    return "".join([
        figure_block("learning-curves", plots.to_png(plots.learning_curves(data)),
                "Learning curves: train loss, validation loss and validation metric per epoch for each variant",
                f"Mean over up to {plural(n, 'seed')} per epoch; the shaded band spans the lowest to the highest "
                "seed."),
        figure_block("schedules", plots.to_png(plots.schedules(data)),
                "Learning rate (log scale) and batch size per epoch for each variant",
                "The learning rate at the start of each epoch; the band is its range within the epoch for "
                "schedules that step every batch."),
        figure_block("metric", plots.to_png(plots.metric_bars(data, rows)),
                f"Bar chart of {data.metric} per variant with 95% confidence intervals and the baseline as a "
                "dashed line",
                "Bars: mean; whiskers: 95% CI of the mean; dots: single seeds; dashed line: the baseline's mean."),
    ])


def _text(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return "—" if value is None else str(value)


def environment_list(environment: dict[str, Any]) -> str:
    if not environment:
        return '<p class="note">Not recorded.</p>'
    items = "".join(f"<dt>{escape(str(k))}</dt><dd>{escape(_text(v))}</dd>" for k, v in environment.items())
    return f"<dl>{items}</dl>"


def render(data: AblationData, rows: list[Row]) -> str:
    """The report as an HTML document (a string)."""
    better = "higher is better" if data.higher_is_better else "lower is better"
    seeds = ", ".join(str(s) for s in data.seeds)
    title = f"Ablation: {data.study}"
    meta = (f"metric <b>{escape(data.metric)}</b> ({better}) · mode <b>{escape(data.mode)}</b> · "
            f"<b>{plural(len(data.seeds), 'seed')}</b> ({escape(seeds)}) · "
            f"<b>{plural(len(data.variants), 'variant')}</b>, "
            f"the first is the baseline")
    config = escape(mask_password(data.config_toml.strip())) or "not recorded"  # a tracking URI's password: ***
    return "\n".join([
        page_head(title),
        f'<header><h1>{escape(title)}</h1><p class="meta">{meta}</p></header>',
        f'<section><h2>Results</h2>{_table(data, rows)}</section>',
        f'<section class="read"><h2>How to read this</h2>{_how_to_read(data, rows)}</section>',
        f"<section><h2>Plots</h2>{_plots(data, rows)}</section>",
        f"<section><h2>Environment</h2>{environment_list(data.environment)}</section>",
        f"<section><h2>Baseline configuration</h2><pre>{config}</pre></section>",
        "</main></body></html>",
        "",
    ])


def write_report(data: AblationData, rows: list[Row], path: str | Path) -> Path:
    """Write the report to `path` (folders created) and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, render(data, rows))  # atomically: a full disk leaves the old report, or none
