"""The search report as one self-contained HTML file: summary, top trials, failures, plots, best config, environment.
Laid out by templates/tune.html."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from dltune.errors import mask_password
from dltune.files import write_text
from dltune.report import tune_data as td
from dltune.report import tune_plots as tp
from dltune.report.cells import metric_text
from dltune.report.plots import to_png
from dltune.report.tables import format_value as param_text
from dltune.report.templating import Cell, InlinePlot, TableRow, inline_plot, key_values, render_page
from dltune.study.records import TrialRecord, TuneData

__all__ = ["objective_text", "render_tune", "top_trials", "write_tune_report"]

_UNSET = object()  # a parameter the trial did not sample (a conditional entry)


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


def _param_cell(value: object, numeric: bool) -> Cell:
    align = "param num" if numeric else "param"
    if value is _UNSET:
        return Cell("—", align)
    return Cell(_param_text(value), align, repr(value) if isinstance(value, float) else None)


def _table(data: TuneData, rows: list[TrialRecord]) -> dict[str, Any]:
    """The top trials' header, rows and note; no rows when no trial has completed."""
    params: dict[str, None] = {}
    for trial in rows:
        params.update(dict.fromkeys(trial.params))
    numeric = {p: all(td.is_number(t.params[p]) for t in rows if p in t.params) for p in params}
    arrows = {"maximize": "\u2191", "minimize": "\u2193"}
    head = [Cell("rank", "num"), Cell("trial", "num")]
    head += [Cell(f"{td.objective_label(o)}\u00a0{arrows.get(d, '')}", "num", d)
             for o, d in zip(data.objectives, data.directions, strict=True)]
    head += [Cell("state"), Cell("epochs", "num")]
    head += [Cell(p, "num" if numeric[p] else None) for p in params]
    best = set(data.best)
    body = []
    for rank, trial in enumerate(rows, start=1):
        cells = [Cell(str(rank), "num"), Cell(str(trial.number), "num trial")]
        cells += [Cell(objective_text(o, v), "num") for o, v in zip(data.objectives, trial.values or [], strict=False)]
        cells += [Cell(trial.state.lower()), Cell(str(len(trial.epochs)), "num")]
        cells += [_param_cell(trial.params.get(p, _UNSET), numeric[p]) for p in params]
        body.append(TableRow(cells, "best" if trial.number in best else None))
    best_rows = "The best complete trial" if len(rows) == 1 else f"The {len(rows)} best complete trials"
    note = (f"{best_rows} by {data.objectives[0]}; highlighted: "
            f"{'the Pareto front' if len(data.objectives) > 1 else 'the best trial'}.")
    return {"head": head, "rows": body, "note": note}


def _summary(data: TuneData) -> dict[str, Any]:
    """The header's counts: trials by state, epochs and seconds trained, the best trial or the Pareto front."""
    states = Counter(t.state for t in data.trials)
    counts = [(states["COMPLETE"], "complete"), (states["PRUNED"], "pruned"), (states["FAIL"], "failed"),
              (states["RUNNING"], "running")]
    if states["INTERRUPTED"]:
        counts.insert(2, (states["INTERRUPTED"], "interrupted (queued again)"))
    if states["WAITING"]:
        counts.append((states["WAITING"], "waiting"))
    seconds = sum(t.train_seconds or 0.0 for t in data.trials)
    done = {t.number: t for t in td.complete_trials(data)}
    front = [done[n] for n in data.best if n in done]
    best = None
    if len(data.objectives) == 1 and front:
        value = objective_text(data.objectives[0], (front[0].values or [])[0])  # complete: it has values
        unit = "%" if td.objective_scale(data.objectives[0]) != 1 else ""
        best = {"number": front[0].number, "objective": data.objectives[0], "value": value + unit}
    return {"trials": len(data.trials), "counts": counts, "epochs": sum(len(t.epochs) for t in data.trials),
            "seconds": f"{seconds:,.1f}" if seconds else None, "best": best, "complete": len(done),
            "front": [t.number for t in td.ranked(data, front)], "rungs_moved": [m["said"] for m in data.rungs_moved]}


def _failures(data: TuneData) -> list[dict[str, Any]]:
    """The failed trials with their errors, and the interrupted ones with why they ended and where they went on;
    a kind with no trial is left out."""
    kinds = []
    for state, title, anchor in (("FAIL", "Failed trials", "failed"),
                                 ("INTERRUPTED", "Interrupted trials", "interrupted")):
        ended = sorted((t for t in data.trials if t.state == state), key=lambda t: t.number)
        trials = [{"number": t.number,
                   "params": ", ".join(f"{k}={_param_text(v)}" for k, v in t.params.items()) or "no parameters",
                   "why": ((t.error if state == "FAIL" else t.interrupted) or "no error recorded").strip()}
                  for t in ended]
        if trials:
            kinds.append({"anchor": anchor, "title": title, "trials": trials})
    return kinds


def _plots(data: TuneData) -> list[InlinePlot]:
    objective = data.objectives[0]
    better = "higher" if data.directions[0] == "maximize" else "lower"
    info = td.history(data)
    pruned = (" Crosses: pruned trials, at the last value they reported before they were stopped."
              if info.pruned_numbers.size else "")
    shown = [inline_plot("history", to_png(tp.plot_history(info)),
                         f"Optimization history: {objective} per trial number with the best value so far",
                         f"Dots: complete trials.{pruned} Line: the best value so far ({better} is better).")]
    bars = td.importance_bars(data)
    if bars:
        shown.append(inline_plot("importances", to_png(tp.plot_importances(bars, objective)),
                                 f"Bar chart of each searched parameter's importance for {objective}",
                                 "How much of the variation of the objective over the complete trials each "
                                 "parameter accounts for. A guide to which ranges matter, not a measured effect."))
    cuts = td.slices(data)
    if cuts:
        some = f" (the {len(cuts)} most important)" if len(td.searched_params(data)) > len(cuts) else ""
        shown.append(inline_plot("slices", to_png(tp.plot_slices(cuts, objective)),
                                 f"Scatter plots of {objective} against each searched parameter{some}",
                                 "One dot per complete trial, coloured by trial number: late trials gather where "
                                 "the sampler found good values. Categories (and layer lists) are spread a little "
                                 "sideways so that coinciding trials stay visible."))
    front = td.pareto(data)
    if front is not None:
        shown.append(inline_plot("pareto", to_png(tp.plot_pareto(front)),
                                 f"Scatter plot of {front.objectives[0]} against {front.objectives[1]} with the "
                                 "Pareto front highlighted",
                                 "Red: the Pareto front, the trials that no other trial beats in every objective, "
                                 "labelled with their trial numbers."))
    panels = td.curve_panels(data)
    if panels:
        who = "the best trial" if len(panels[0].lines) == 1 else \
            f"the Pareto front's trials (the {td.MAX_CURVES} best by {objective} at most)"
        shown.append(inline_plot("learning-curves", to_png(tp.plot_curves(panels)),
                                 f"Learning curves of {who}: train loss, validation loss and validation metric per "
                                 "epoch", f"The per-epoch history of {who}, as recorded during training."))
    return shown


def render_tune(data: TuneData) -> str:
    """The report as an HTML document (a string)."""
    # a tracking URI's password in either configuration: ***
    return render_page(
        "tune.html", title=f"Search: {data.study}", objectives=list(zip(data.objectives, data.directions, strict=True)),
        engines=[(k, v) for k, v in (("sampler", data.sampler), ("pruner", data.pruner)) if v],
        summary=_summary(data), trials=_table(data, top_trials(data)), failures=_failures(data), plots=_plots(data),
        best_config=mask_password(data.best_config_toml.strip()) if data.best_config_toml else None,
        environment=key_values(data.environment), config=mask_password(data.config_toml.strip()))


def write_tune_report(data: TuneData, path: str | Path) -> Path:
    """Write the report to `path` (folders created) and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, render_tune(data))  # by rename: a reader never sees half a report
