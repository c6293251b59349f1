"""The search report as one self-contained HTML file: summary, top trials, failures, plots, best config, environment."""

from __future__ import annotations

from collections import Counter
from html import escape
from pathlib import Path

from dltune.errors import mask_password
from dltune.files import write_text
from dltune.study.records import TrialRecord, TuneData
from dltune.report import tune_data as td
from dltune.report import tune_plots as tp
from dltune.report.cells import metric_text
from dltune.report.html import environment_list, figure_block, page_head
from dltune.report.plots import to_png
from dltune.report.tables import format_value as param_text

__all__ = ["objective_text", "render_tune", "top_trials", "write_tune_report"]

_UNSET = object()  # a parameter the trial did not sample (a conditional entry)

# added to the ablation report's stylesheet
_TUNE_CSS = """
tr.best td { background: #dafbe1; }
tbody tr.best:nth-child(even) td { background: #ccf3d4; }
tr.best td.trial { font-weight: 700; }
td.param { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; font-size: 12px;
  white-space: nowrap; }
.summary { margin: 14px 0 0; }
.failure { margin: 0 0 14px; }
.failure p { margin: 0 0 4px; font-size: 14px; }
.failure code { font-size: 12.5px; }
pre.error { color: var(--bad); white-space: pre-wrap; margin: 0; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; font-size: 13px;
  background: var(--zebra); padding: 1px 4px; border-radius: 3px; }
"""


def top_trials(data: TuneData, k: int | None = None) -> list[TrialRecord]:
    """The `k` (default: the search's top_k, else all) best complete trials by the first objective in its
    direction, best first (ties: lower number)."""
    k = k if k is not None else data.top_k
    return td.ranked(data, td.complete_trials(data))[:k]


def objective_text(objective: str, value: float | None) -> str:
    """An objective's value as shown: fractions as percent with 2 decimals, parameter counts with thousands
    separators, anything else (loss, latency in ms per example) with 4 significant digits."""
    if value is None:
        return "—"
    if objective.rsplit(".", 1)[-1] == "parameters":
        return f"{round(value):,}"
    return metric_text(value, objective)


def _param_text(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else param_text(value)


def _param_cell(value: object, numeric: bool) -> str:
    align = "param num" if numeric else "param"
    if value is _UNSET:
        return f'<td class="{align}">—</td>'
    title = f' title="{escape(repr(value))}"' if isinstance(value, float) else ""
    return f'<td class="{align}"{title}>{escape(_param_text(value))}</td>'


def _table(data: TuneData, rows: list[TrialRecord]) -> str:
    if not rows:
        return '<p class="note">No trial has completed.</p>'
    params: dict[str, None] = {}
    for trial in rows:
        params.update(dict.fromkeys(trial.params))
    arrows = {"maximize": "\u2191", "minimize": "\u2193"}
    head = ['<th class="num">rank</th>', '<th class="num">trial</th>']
    head += [f'<th class="num" title="{escape(d)}">{escape(td.objective_label(o))}\u00a0{arrows.get(d, "")}</th>'
             for o, d in zip(data.objectives, data.directions, strict=True)]
    numeric = {p: all(td.is_number(t.params[p]) for t in rows if p in t.params) for p in params}
    head += ["<th>state</th>", '<th class="num">epochs</th>']
    head += [f'<th class="num">{escape(p)}</th>' if numeric[p] else f"<th>{escape(p)}</th>" for p in params]
    best = set(data.best)
    body = []
    for rank, trial in enumerate(rows, start=1):
        tds = [f'<td class="num">{rank}</td>', f'<td class="num trial">{trial.number}</td>']
        tds += [f'<td class="num">{escape(objective_text(o, v))}</td>'
                for o, v in zip(data.objectives, trial.values or [], strict=False)]
        tds += [f"<td>{escape(trial.state.lower())}</td>", f'<td class="num">{len(trial.epochs)}</td>']
        tds += [_param_cell(trial.params.get(p, _UNSET), numeric[p]) for p in params]
        mark = ' class="best"' if trial.number in best else ""
        body.append(f"<tr{mark}>{''.join(tds)}</tr>")
    best_rows = "The best complete trial" if len(rows) == 1 else f"The {len(rows)} best complete trials"
    note = (f"{best_rows} by {data.objectives[0]}; highlighted: "
            f"{'the Pareto front' if len(data.objectives) > 1 else 'the best trial'}.")
    return (f'<div class="scroll"><table id="trials"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div><p class="note">{escape(note)}</p>')


def _summary(data: TuneData) -> str:
    states = Counter(t.state for t in data.trials)
    counts = [f"<b>{states['COMPLETE']}</b> complete", f"<b>{states['PRUNED']}</b> pruned",
              f"<b>{states['FAIL']}</b> failed", f"<b>{states['RUNNING']}</b> running"]
    if states["INTERRUPTED"]:
        counts.insert(2, f"<b>{states['INTERRUPTED']}</b> interrupted (queued again)")
    if states["WAITING"]:
        counts.append(f"<b>{states['WAITING']}</b> waiting")
    epochs = sum(len(t.epochs) for t in data.trials)
    seconds = sum(t.train_seconds or 0.0 for t in data.trials)
    cost = f"<b>{epochs}</b> {'epoch' if epochs == 1 else 'epochs'} trained across all trials (the search's cost)"
    if seconds:
        cost += f", {seconds:,.1f} s of training"
    trials = "trial" if len(data.trials) == 1 else "trials"
    lines = [f"<b>{len(data.trials)}</b> {trials}: {' · '.join(counts)}. {cost}."]
    done = {t.number: t for t in td.complete_trials(data)}
    front = [done[n] for n in data.best if n in done]
    if len(data.objectives) == 1 and front:
        value = objective_text(data.objectives[0], (front[0].values or [])[0])  # complete: it has values
        unit = "%" if td.objective_scale(data.objectives[0]) != 1 else ""
        lines.append(f"Best: trial <b>{front[0].number}</b> with {escape(data.objectives[0])} "
                     f"<b>{escape(value)}{unit}</b>.")
    elif front:
        numbers = ", ".join(str(t.number) for t in td.ranked(data, front))
        lines.append(f"Pareto front: trials <b>{escape(numbers)}</b> ({len(front)} of {len(done)} complete trials: "
                     "none of them is beaten in every objective by another trial).")
    lines += [f"Pruning: {escape(moved['said'])}." for moved in data.rungs_moved]
    return "".join(f'<p class="meta summary">{line}</p>' for line in lines)


def _failures(data: TuneData) -> str:
    """The failed trials with their errors, and the interrupted ones with why they ended and where they went on."""
    sections = []
    for state, title, anchor in (("FAIL", "Failed trials", "failed"), ("INTERRUPTED", "Interrupted trials",
                                                                         "interrupted")):
        ended = sorted((t for t in data.trials if t.state == state), key=lambda t: t.number)
        items = []
        for t in ended:
            params = ", ".join(f"{k}={_param_text(v)}" for k, v in t.params.items()) or "no parameters"
            why = t.error if state == "FAIL" else t.interrupted
            items.append(f'<div class="failure"><p>trial <b>{t.number}</b> · <code>{escape(params)}</code></p>'
                         f'<pre class="error">{escape((why or "no error recorded").strip())}</pre></div>')
        if items:
            sections.append(f'<section id="{anchor}"><h2>{title}</h2>{"".join(items)}</section>')
    return "".join(sections)


def _plots(data: TuneData) -> str:
    objective = data.objectives[0]
    better = "higher" if data.directions[0] == "maximize" else "lower"
    info = td.history(data)
    pruned = (" Crosses: pruned trials, at the last value they reported before they were stopped."
              if info.pruned_numbers.size else "")
    figures = [figure_block("history", to_png(tp.plot_history(info)),
                       f"Optimization history: {objective} per trial number with the best value so far",
                       f"Dots: complete trials.{pruned} Line: the best value so far ({better} is better).")]
    bars = td.importance_bars(data)
    if bars:
        figures.append(figure_block("importances", to_png(tp.plot_importances(bars, objective)),
                               f"Bar chart of each searched parameter's importance for {objective}",
                               "How much of the variation of the objective over the complete trials each parameter "
                               "accounts for. A guide to which ranges matter, not a measured effect."))
    cuts = td.slices(data)
    if cuts:
        shown = f" (the {len(cuts)} most important)" if len(td.searched_params(data)) > len(cuts) else ""
        figures.append(figure_block("slices", to_png(tp.plot_slices(cuts, objective)),
                               f"Scatter plots of {objective} against each searched parameter{shown}",
                               "One dot per complete trial, coloured by trial number: late trials gather where "
                               "the sampler found good values. Categories (and layer lists) are spread a little "
                               "sideways so that coinciding trials stay visible."))
    front = td.pareto(data)
    if front is not None:
        figures.append(figure_block("pareto", to_png(tp.plot_pareto(front)),
                               f"Scatter plot of {front.objectives[0]} against {front.objectives[1]} with the "
                               "Pareto front highlighted",
                               "Red: the Pareto front, the trials that no other trial beats in every objective, "
                               "labelled with their trial numbers."))
    panels = td.curve_panels(data)
    if panels:
        who = "the best trial" if len(panels[0].lines) == 1 else \
            f"the Pareto front's trials (the {td.MAX_CURVES} best by {objective} at most)"
        figures.append(figure_block("learning-curves", to_png(tp.plot_curves(panels)),
                               f"Learning curves of {who}: train loss, validation loss and validation metric per epoch",
                               f"The per-epoch history of {who}, as recorded during training."))
    return "".join(figures)


def _best_config(data: TuneData) -> str:
    if not data.best_config_toml:
        return '<p class="note">Not recorded: no trial has completed.</p>'
    which = "" if len(data.objectives) == 1 else "The experiment of one trial of the Pareto front. "
    return (f"<p>{which}Save it as <code>best.toml</code> and run it with: <code>dltune train best.toml</code></p>"
            f'<pre id="best-config">{escape(mask_password(data.best_config_toml.strip()))}</pre>')


def render_tune(data: TuneData) -> str:
    """The report as an HTML document (a string)."""
    title = f"Search: {data.study}"
    objectives = ", ".join(f"<b>{escape(o)}</b> ({escape(d)})"
                           for o, d in zip(data.objectives, data.directions, strict=True))
    meta = [f"{'objectives' if len(data.objectives) > 1 else 'objective'} {objectives}"]
    meta += [f"{k} <b>{escape(v)}</b>" for k, v in (("sampler", data.sampler), ("pruner", data.pruner)) if v]
    config = escape(mask_password(data.config_toml.strip())) or "not recorded"  # a tracking URI's password: ***
    return "\n".join([
        page_head(title, _TUNE_CSS),
        f'<header><h1>{escape(title)}</h1><p class="meta">{" · ".join(meta)}</p>{_summary(data)}</header>',
        f"<section><h2>Top trials</h2>{_table(data, top_trials(data))}</section>",
        _failures(data),
        f"<section><h2>Plots</h2>{_plots(data)}</section>",
        f"<section><h2>Best configuration</h2>{_best_config(data)}</section>",
        f"<section><h2>Environment</h2>{environment_list(data.environment)}</section>",
        f"<section><h2>Experiment and search space</h2><pre>{config}</pre></section>",
        "</main></body></html>",
        "",
    ])


def write_tune_report(data: TuneData, path: str | Path) -> Path:
    """Write the report to `path` (folders created) and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, render_tune(data))  # by rename: a reader never sees half a report
