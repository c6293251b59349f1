"""What the figures of a search show, computed apart from drawing them (as Optuna's `visualization` does): the
optimization history, importances, slices, the Pareto front and the best trials' learning curves, as plain data."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from dltune.report.cells import is_fraction
from dltune.report.curves import epoch_value
from dltune.report.tables import format_value as param_text
from dltune.study.records import TrialRecord, TuneData

__all__ = [
    "MAX_CURVES", "MAX_SLICES", "CurvePanel", "Front", "History", "Slice", "complete_trials", "curve_panels", "history",
    "importance_bars", "is_number", "objective_label", "objective_scale", "pareto", "ranked", "reported_value",
    "searched_params", "slices", "spans_decades",
]

MAX_SLICES = 8  # parameters shown in the slice grid, the most important first
MAX_CATEGORIES = 6  # distinct layer lists shown as categories; more are drawn by their sum of widths
MAX_CURVES = 6  # trials in the learning-curve plot: more lines than this cannot be told apart
LOG_DECADES = 2  # a positive axis whose values span more decades than this is drawn on a log scale


class History(NamedTuple):
    """The first objective per trial number (values scaled as plotted), and its best value so far."""

    objective: str
    direction: str
    numbers: np.ndarray  # complete trials
    values: np.ndarray
    pruned_numbers: np.ndarray  # pruned trials with a reported value
    pruned_values: np.ndarray  # their last reported value of the objective
    best_numbers: np.ndarray  # the best trial, or the Pareto front
    best_values: np.ndarray
    best_label: str  # "best trial" | "Pareto front"
    step_numbers: np.ndarray  # the best-so-far line: every complete trial, and the last trial of the search
    step_values: np.ndarray


class Slice(NamedTuple):
    """The first objective (scaled) against one searched parameter over the complete trials that set it."""

    param: str
    xlabel: str  # the parameter, and what its axis shows when not the value itself
    scale: str  # "linear" | "log" | "category"
    x: np.ndarray  # the value, or for a category its position in `categories`
    y: np.ndarray
    numbers: np.ndarray  # trial numbers
    categories: list[str]  # tick labels of a categorical parameter, as written in TOML ("[128, 64]")


class Front(NamedTuple):
    """The first two objectives (scaled) of every complete trial, and the Pareto front's trials sorted along x."""

    objectives: tuple[str, str]
    directions: tuple[str, str]
    n_objectives: int
    x: np.ndarray
    y: np.ndarray
    front_numbers: np.ndarray
    front_x: np.ndarray
    front_y: np.ndarray


class CurvePanel(NamedTuple):
    """One panel of the learning curves: a per-epoch series per shown trial, as (label, epochs, values)."""

    key: str  # "train.loss", "val.loss", "val.accuracy"
    title: str
    ylabel: str
    lines: list[tuple[str, np.ndarray, np.ndarray]]


# --- data ---------------------------------------------------------------------------------------------------------


def objective_scale(objective: str) -> float:
    """The factor from stored to shown values: 100 for fractions shown as percentages, else 1."""
    return 100.0 if is_fraction(objective) else 1.0


def objective_label(objective: str) -> str:
    """An axis label with the unit: "val.accuracy (%)", "latency (ms per example)", "parameters (count)"."""
    name = objective.rsplit(".", 1)[-1]
    if is_fraction(objective):
        return f"{objective} (%)"
    if name == "latency":
        return f"{objective} (ms per example)"
    if name == "parameters":
        return f"{objective} (count)"
    return objective


def _finite(values: list[float] | None) -> bool:
    return values is not None and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def complete_trials(data: TuneData) -> list[TrialRecord]:
    """The trials that finished with a finite value for every objective, by trial number."""
    done = [t for t in data.trials if t.state == "COMPLETE" and _finite(t.values)
            and len(t.values or []) >= len(data.objectives)]
    return sorted(done, key=lambda t: t.number)


def ranked(data: TuneData, trials: list[TrialRecord]) -> list[TrialRecord]:
    """`trials` (complete ones) sorted best first by the first objective in its direction; ties by trial number."""
    sign = -1.0 if data.directions[0] == "maximize" else 1.0
    return sorted(trials, key=lambda t: (sign * (t.values or [math.nan])[0], t.number))


def reported_value(trial: TrialRecord, objective: str) -> float | None:
    """The objective's last value in the trial's epochs (for a test.* objective, its val.* counterpart): what a
    pruned trial last reported to the pruner; None when no epoch has it."""
    keys = [objective] + (["val." + objective.split(".", 1)[1]] if objective.startswith("test.") else [])
    for record in reversed(trial.epochs):
        for key in keys:
            value = epoch_value(record, key)
            if value is not None:
                return value
    return None


def spans_decades(values: np.ndarray) -> bool:
    """Whether positive values span more than LOG_DECADES decades: then their axis is drawn on a log scale."""
    return values.size > 1 and float(values.min()) > 0 and float(values.max() / values.min()) > 10 ** LOG_DECADES


def history(data: TuneData) -> History:
    """The optimization history of the first objective."""
    objective, direction = data.objectives[0], data.directions[0]
    scale = objective_scale(objective)
    done = complete_trials(data)
    numbers = np.array([t.number for t in done], dtype=int)
    values = np.array([(t.values or [])[0] for t in done], dtype=float) * scale
    reported = [(t.number, reported_value(t, objective)) for t in data.trials if t.state == "PRUNED"]
    pruned = sorted((n, v * scale) for n, v in reported if v is not None)
    best = set(data.best)
    running = np.maximum.accumulate(values) if direction == "maximize" else np.minimum.accumulate(values)
    step_numbers, step_values = numbers, running
    last = max((t.number for t in data.trials), default=-1)
    if numbers.size and last > numbers[-1]:  # the line runs on to the search's last trial
        step_numbers, step_values = np.append(numbers, last), np.append(running, running[-1])
    return History(
        objective, direction, numbers, values,
        np.array([n for n, _ in pruned], dtype=int), np.array([v for _, v in pruned], dtype=float),
        np.array([n for n in numbers if n in best], dtype=int),
        np.array([v for n, v in zip(numbers, values, strict=True) if n in best], dtype=float),
        "Pareto front" if len(data.objectives) > 1 else "best trial", step_numbers, step_values)


def importance_bars(data: TuneData) -> list[tuple[str, float]]:
    """(parameter, importance) most important first; empty when the study has no importances."""
    return sorted((data.importances or {}).items(), key=lambda item: (-item[1], item[0]))


def searched_params(data: TuneData) -> list[str]:
    """Every parameter any trial sampled: the most important first (a layer list counts the importances of
    Optuna's parameters for its depth and widths, "model.hidden.depth", "model.hidden[0]"), then as first sampled."""
    seen: dict[str, None] = {}
    for trial in sorted(data.trials, key=lambda t: t.number):
        seen.update(dict.fromkeys(trial.params))
    bars = importance_bars(data)

    def weight(name: str) -> float:
        return sum(v for k, v in bars if k == name or k.startswith((name + ".", name + "[")))

    return sorted(seen, key=lambda name: -weight(name))  # stable: ties keep the order first sampled


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool: a parameter drawn on a numeric axis."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _categories(values: list[Any]) -> list[Any]:
    distinct: list[Any] = []
    for value in values:
        if value not in distinct:
            distinct.append(value)
    try:
        return sorted(distinct)
    except TypeError:  # mixed kinds (a string and a list): the order first sampled
        return distinct


def slices(data: TuneData, limit: int = MAX_SLICES) -> list[Slice]:
    """The first objective against each searched parameter (at most `limit`, the most important first):
    numbers on a linear or log axis, anything else (strings, booleans, lists) as categories."""
    factor = objective_scale(data.objectives[0])
    done = complete_trials(data)
    out = []
    for param in searched_params(data)[:limit]:
        having = [t for t in done if param in t.params]
        if not having:
            continue
        raw = [t.params[param] for t in having]
        y = np.array([(t.values or [])[0] for t in having], dtype=float) * factor
        numbers = np.array([t.number for t in having], dtype=int)
        label = param
        if all(isinstance(v, list) and all(is_number(w) for w in v) for v in raw) and \
                len(_categories(raw)) > MAX_CATEGORIES:  # sampled layer widths: too many lists to tell apart
            raw, label = [sum(v) for v in raw], f"{param} (sum of widths)"
        if all(is_number(v) for v in raw):
            x = np.array(raw, dtype=float)
            scale = "log" if spans_decades(x) else "linear"
            out.append(Slice(param, label + (" (log scale)" if scale == "log" else ""), scale, x, y, numbers, []))
        else:
            categories = _categories(raw)
            x = np.array([categories.index(v) for v in raw], dtype=float)
            out.append(Slice(param, param, "category", x, y, numbers, [param_text(c) for c in categories]))
    return out


def pareto(data: TuneData) -> Front | None:
    """The first two objectives of the complete trials and the front (`data.best`); None for one objective."""
    if len(data.objectives) < 2:
        return None
    done = complete_trials(data)
    sx, sy = objective_scale(data.objectives[0]), objective_scale(data.objectives[1])
    front = sorted(((t.values or [])[0], (t.values or [])[1], t.number) for t in done if t.number in set(data.best))
    return Front(
        (data.objectives[0], data.objectives[1]), (data.directions[0], data.directions[1]), len(data.objectives),
        np.array([(t.values or [])[0] for t in done], dtype=float) * sx,
        np.array([(t.values or [])[1] for t in done], dtype=float) * sy,
        np.array([n for *_, n in front], dtype=int),
        np.array([x for x, *_ in front], dtype=float) * sx, np.array([y for _, y, _ in front], dtype=float) * sy)


def _val_metric(data: TuneData, trials: list[TrialRecord]) -> str | None:
    first = data.objectives[0]
    candidates = ([first] if first.startswith("val.") and first != "val.loss" else []) + ["val.accuracy", "val.r2"]
    for key in candidates:
        if any(epoch_value(record, key) is not None for t in trials for record in t.epochs):
            return key
    return None


def curve_panels(data: TuneData, limit: int = MAX_CURVES) -> list[CurvePanel]:
    """Train loss, validation loss and a validation metric per epoch of the best trial (or, with several
    objectives, of the front's trials, at most `limit`, best first by the first objective); empty when none ran."""
    best = set(data.best)
    shown = [t for t in ranked(data, complete_trials(data)) if t.number in best and t.epochs][:limit]
    if not shown:
        return []
    keys = [("train.loss", "train loss", "loss"), ("val.loss", "validation loss", "loss")]
    metric = _val_metric(data, shown)
    if metric is not None:
        keys.append((metric, f"validation {metric.split('.', 1)[1]}", objective_label(metric).replace("val.", "")))
    panels = []
    for key, title, label in keys:
        lines = []
        for trial in shown:
            points = [(int(r.get("epoch", i + 1)), epoch_value(r, key)) for i, r in enumerate(trial.epochs)]
            points = [(e, v) for e, v in points if v is not None]
            lines.append((f"trial {trial.number}", np.array([e for e, _ in points], dtype=int),
                          np.array([v for _, v in points], dtype=float) * objective_scale(key)))
        panels.append(CurvePanel(key, title, label, lines))
    return panels


# --- drawing ------------------------------------------------------------------------------------------------------
