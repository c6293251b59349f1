"""The search report as one self-contained HTML file: summary, top trials, failures, a population-based training
search's lineage and schedules, plots, best config, environment. Laid out by templates/tune.html."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from dltune.errors import mask_password
from dltune.files import write_text
from dltune.report import pbt_data as pbt
from dltune.report import pbt_plots as pp
from dltune.report import tune_data as td
from dltune.report import tune_plots as tp
from dltune.report.cells import metric_text
from dltune.report.plots import to_png
from dltune.report.tables import format_value as param_text
from dltune.report.templating import Cell, InlinePlot, TableRow, inline_plot, key_values, render_page
from dltune.study.records import TrialRecord, TuneData

__all__ = ["changes_text", "objective_text", "render_tune", "top_trials", "write_tune_report"]

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


def changes_text(changes: list[dict[str, Any]]) -> str:
    """A PBT schedule's train.changes as read: "from epoch 3: optim.lr=0.0076, optim.momentum=0.68; ..."."""
    return "; ".join(f"from epoch {c['epoch']}: " + ", ".join(f"{k}={_param_text(v)}" for k, v in c.items()
                                                               if k != "epoch") for c in changes) or "—"


def _table(data: TuneData, rows: list[TrialRecord]) -> dict[str, Any]:
    """The top trials' header, rows and note; no rows when no trial has completed. A PBT search's trials are its
    members' last segments: their member is shown, and their train.changes as text."""
    population = pbt.is_pbt(data)
    params: dict[str, None] = {}
    for trial in rows:
        params.update(dict.fromkeys(trial.params))
    numeric = {p: all(td.is_number(t.params[p]) for t in rows if p in t.params) for p in params}
    arrows = {"maximize": "\u2191", "minimize": "\u2193"}
    head = [Cell("rank", "num"), Cell("trial", "num")] + ([Cell("member", "num")] if population else [])
    head += [Cell(f"{td.objective_label(o)}\u00a0{arrows.get(d, '')}", "num", d)
             for o, d in zip(data.objectives, data.directions, strict=True)]
    head += [Cell("state"), Cell("epochs", "num")]
    head += [Cell(p, "num" if numeric[p] else None) for p in params]
    best = set(data.best)
    body = []
    for rank, trial in enumerate(rows, start=1):
        cells = [Cell(str(rank), "num"), Cell(str(trial.number), "num trial")]
        if population:
            cells.append(Cell(str((trial.pbt or {}).get("member", "—")), "num"))
        cells += [Cell(objective_text(o, v), "num") for o, v in zip(data.objectives, trial.values or [], strict=False)]
        cells += [Cell(trial.state.lower()), Cell(str(len(trial.epochs)), "num")]
        cells += [Cell(changes_text(trial.params.get(p) or []), "changes")
                  if population and p == pbt.CHANGES else _param_cell(trial.params.get(p, _UNSET), numeric[p])
                  for p in params]
        body.append(TableRow(cells, "best" if trial.number in best else None))
    best_rows = "The best complete trial" if len(rows) == 1 else f"The {len(rows)} best complete trials"
    note = (f"{best_rows} by {data.objectives[0]}; highlighted: "
            f"{'the Pareto front' if len(data.objectives) > 1 else 'the best trial'}.")
    if population:
        note += (" Each is a member's last generation; its settings are its lineage's first ones, changed by "
                 f"{pbt.CHANGES} from the epochs given.")
    return {"head": head, "rows": body, "note": note}


def _summary(data: TuneData) -> dict[str, Any]:
    """The header's counts: trials by state, epochs and seconds trained, the best trial or the Pareto front."""
    states = Counter(t.state for t in data.trials)
    counts = [(states["COMPLETE"], "complete"), (states["PRUNED"], "pruned"), (states["FAIL"], "failed"),
              (states["RUNNING"], "running")]
    epochs = sum(len(t.epochs) for t in data.trials)
    if pbt.is_pbt(data):  # a segment told PRUNED paused at its generation's end (or diverged): nothing pruned it
        diverged = sum(t.state == "PRUNED" and t.status == "diverged" for t in data.trials)
        counts[0:2] = [(states["COMPLETE"], "complete (members' last generations)"),
                       (states["PRUNED"] - diverged, "PBT segments of earlier generations")]
        if diverged:
            counts.insert(2, (diverged, "diverged"))
        # a member's last segment holds its whole history, inherited epochs included: count each segment's own
        epochs = sum(t.pbt["end"] - t.pbt["start"] for t in pbt.segments(data) if t.pbt is not None)
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
    return {"trials": len(data.trials), "counts": counts, "epochs": epochs,
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
    population = pbt.is_pbt(data)
    # PBT: the history of its members' last segments; its earlier ones paused, no pruner stopped them
    info = td.history(replace(data, trials=[t for t in data.trials if t.state != "PRUNED"]) if population else data)
    pruned = (" Crosses: pruned trials, at the last value they reported before they were stopped."
              if info.pruned_numbers.size else "")
    shown = [inline_plot("history", to_png(tp.plot_history(info)),
                         f"Optimization history: {objective} per trial number with the best value so far",
                         f"Dots: complete trials.{pruned} Line: the best value so far ({better} is better).")]
    # PBT: no importances or slices; a member's value comes of its whole schedule, not of one value per key
    bars = [] if population else td.importance_bars(data)
    if bars:
        shown.append(inline_plot("importances", to_png(tp.plot_importances(bars, objective)),
                                 f"Bar chart of each searched parameter's importance for {objective}",
                                 "How much of the variation of the objective over the complete trials each "
                                 "parameter accounts for. A guide to which ranges matter, not a measured effect."))
    cuts = [] if population else td.slices(data)
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


def _pbt_section(data: TuneData) -> dict[str, Any] | None:
    """A PBT search's lineage and schedule plots, and the best member's schedule per epoch as a table; None for
    any other search."""
    if not pbt.is_pbt(data):
        return None
    objective = data.objectives[0]
    lineage = pbt.lineage(data)
    generations = len({s.generation for s in lineage.segments})
    plots = []
    if lineage.segments:
        plots.append(inline_plot(
            "pbt-lineage", to_png(pp.plot_lineage(lineage)),
            "Lineage of the population: each member's generations per epoch, coloured by "
            f"{objective}, with an arrow for each copy of another member's state",
            f"One track per member; a bar is one generation (one trial), coloured by {objective} at its end. "
            "An arrow runs from the member whose state was copied (exploit) to the member that copied it and "
            "went on with changed settings (explore). Outlined: the segments the best member's state went "
            "through."))
    panels = pbt.schedule_panels(data)
    if panels:
        plots.append(inline_plot(
            "pbt-schedules", to_png(pp.plot_schedules(panels)),
            "Step plots of each searched setting per epoch for every member, the best schedule bold",
            "The value each member trained with during each epoch; a jump is an explore, most often where the "
            "member copied another. Bold: the best member's schedule, as best.toml holds it: the settings of "
            "the lineage that its state went through, not of its own track."))
    rows = pbt.best_schedule(data)
    keys = list(rows[0].settings) if rows else []
    head = [Cell("epoch", "num"), Cell("trained by"), *(Cell(k, "num") for k in keys),
            Cell(f"{td.objective_label(objective)} after it", "num"), Cell("state")]
    body = []
    for row in rows:
        came = "trained from the start" if row.epoch == 1 else "went on"
        if row.copied_from is not None:
            how = ", ".join(f"{k} {change}" for k, change in row.changed.items())
            came = f"copied member {row.copied_from}" + (f" ({how})" if how else "")
        cells = [Cell(str(row.epoch), "num"), Cell(f"member {row.member}"),
                 *(_param_cell(row.settings.get(k, _UNSET), True) for k in keys),
                 Cell(objective_text(objective, row.value), "num"), Cell(came)]
        body.append(TableRow(cells, "exploit" if row.copied_from is not None else None))
    copies = len(lineage.copies)
    return {"plots": plots, "head": head, "rows": body, "best": lineage.best_number,
            "members": len(lineage.members), "generations": generations, "segments": len(lineage.segments),
            "copies": copies}


def render_tune(data: TuneData) -> str:
    """The report as an HTML document (a string)."""
    # a tracking URI's password in either configuration: ***
    return render_page(
        "tune.html", title=f"Search: {data.study}", objectives=list(zip(data.objectives, data.directions, strict=True)),
        # PBT queues every segment's settings itself: the study's sampler draws none of them
        engines=[(k, v) for k, v in (("sampler", "" if pbt.is_pbt(data) else data.sampler), ("pruner", data.pruner))
                 if v],
        summary=_summary(data), trials=_table(data, top_trials(data)), failures=_failures(data),
        population=_pbt_section(data), plots=_plots(data),
        best_config=mask_password(data.best_config_toml.strip()) if data.best_config_toml else None,
        environment=key_values(data.environment), config=mask_password(data.config_toml.strip()))


def write_tune_report(data: TuneData, path: str | Path) -> Path:
    """Write the report to `path` (folders created) and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, render_tune(data))  # by rename: a reader never sees half a report
