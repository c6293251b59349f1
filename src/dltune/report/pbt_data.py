"""What the report shows of a population-based training search (search.pruner = "pbt"), as plain data apart from
drawing: the segments and who copied whom (lineage), the settings each member trained with per epoch (schedules),
and the best member's schedule epoch by epoch.

A PBT search stores each member's generation as one trial, a *segment* (study.pbt_search); its TrialRecord.pbt says
which member and epochs it is and whose state it went on from, and its params are its experiment: the lineage's
first settings, then train.changes from their epochs on.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from dltune.report.tune_data import is_number, objective_scale
from dltune.study.records import TrialRecord, TuneData

__all__ = ["CHANGES", "Copy", "Lineage", "ScheduleLine", "SchedulePanel", "ScheduleRow", "Segment", "best_schedule",
           "is_pbt", "lineage", "lineage_of", "schedule_keys", "schedule_panels", "segments", "settings_at"]

CHANGES = "train.changes"  # the params' key of a segment's settings from an epoch on
ENDED = ("COMPLETE", "PRUNED")  # a segment told PRUNED paused at its generation's end: it is not a pruned trial
LOG_RATIO = 10  # a setting whose positive values span more than this factor is drawn on a log axis


class Segment(NamedTuple):
    """One member's generation: epochs start+1..end, trained as trial `number`."""

    number: int
    member: int
    generation: int
    start: int  # epochs done before it
    end: int  # the epoch it ends at
    value: float | None  # the first objective at `end`, scaled as shown (percent for a fraction); None: no value
    copied_from: int | None  # the member whose state it copied at `start` (exploit), or None: it went on


class Copy(NamedTuple):
    """An exploit: after epoch `epoch`, member `copier` took member `donor`'s state (segment `number`)."""

    donor: int
    copier: int
    epoch: int
    number: int
    best: bool  # on the best member's lineage


class Lineage(NamedTuple):
    """Every ended segment on its member's track, the copies between tracks, and the best member's lineage."""

    objective: str
    direction: str
    members: list[int]
    epochs: int  # the run's length: the last segment's end
    segments: list[Segment]
    copies: list[Copy]
    best_path: list[Segment]  # the segments the best member's state went through, generation 0 first
    best_number: int | None  # the best member's last segment (TuneData.best[0]), if a segment


class ScheduleLine(NamedTuple):
    """A setting per epoch, drawn as steps: values[i] is in effect during epoch edges[i] + 1 (NaN: not trained)."""

    label: str
    member: int | None  # None: the best schedule
    edges: np.ndarray  # 0..epochs: the epoch boundaries
    values: np.ndarray  # one per epoch, then the last repeated (a step plot's closing point)


class SchedulePanel(NamedTuple):
    """One key of the space: each member's setting per epoch, and the best member's schedule."""

    key: str
    log: bool
    lines: list[ScheduleLine]
    best: ScheduleLine | None


class ScheduleRow(NamedTuple):
    """One epoch of the best member's schedule: the settings in effect, who trained it, and how its state came."""

    epoch: int
    member: int  # the member that trained this epoch on the best lineage
    settings: dict[str, Any]
    value: float | None  # the first objective at the epoch's end (as stored, unscaled); None when not reported
    copied_from: int | None  # at an exploit epoch: the member whose state was copied after the epoch before
    changed: dict[str, str]  # how each key changed at the exploit ("×1.2", "resampled"); empty otherwise


def is_pbt(data: TuneData) -> bool:
    """Whether the search is population-based training."""
    return data.pruner == "pbt"


def segments(data: TuneData) -> list[TrialRecord]:
    """The ended segments (complete, or paused at their generation's end), one per (member, generation): a segment
    queued again after a kill is the later trial. By generation, then member."""
    latest: dict[tuple[int, int], TrialRecord] = {}
    for trial in sorted(data.trials, key=lambda t: t.number):
        if trial.pbt is not None:
            latest[(trial.pbt["member"], trial.pbt["generation"])] = trial
    return [latest[key] for key in sorted(latest, key=lambda k: (k[1], k[0])) if latest[key].state in ENDED]


def settings_at(params: dict[str, Any], epoch: int) -> dict[str, Any]:
    """The space's settings in effect during `epoch` (1-based) of a segment's experiment: its first values, updated
    by each train.changes entry whose epoch is ≤ `epoch`."""
    now = {key: value for key, value in params.items() if key != CHANGES}
    for change in sorted(params.get(CHANGES) or [], key=lambda c: c["epoch"]):
        if change["epoch"] <= epoch:
            now.update({key: value for key, value in change.items() if key != "epoch"})
    return now


def schedule_keys(data: TuneData) -> list[str]:
    """The keys the members' settings have (the space's), in the order first stored."""
    keys: dict[str, None] = {}
    for trial in segments(data):
        keys.update(dict.fromkeys(k for k in trial.params if k != CHANGES))
    return list(keys)


def _value(trial: TrialRecord, epoch: int) -> float | None:
    """A segment's first objective at `epoch`, as it reported it; None when it did not (it diverged)."""
    values = (trial.pbt or {}).get("values") or {}
    value: Any = values.get(epoch, values.get(str(epoch)))  # str: a record that went through JSON
    return float(value) if is_number(value) else None


def lineage_of(data: TuneData, number: int) -> list[TrialRecord]:
    """The segments whose state trial `number` went on from, generation 0 first, itself last."""
    by_number = {t.number: t for t in data.trials}
    path = []
    trial: TrialRecord | None = by_number.get(number)
    while trial is not None and trial.pbt is not None:
        path.append(trial)
        source = trial.pbt.get("source")
        trial = by_number.get(source) if source is not None else None
    return path[::-1]


def _best_number(data: TuneData) -> int | None:
    by_number = {t.number: t for t in data.trials}
    if data.best and by_number.get(data.best[0]) is not None and by_number[data.best[0]].pbt is not None:
        return data.best[0]
    return None


def _segment(trial: TrialRecord, scale: float) -> Segment:
    seg = trial.pbt or {}
    value = _value(trial, seg["end"])
    return Segment(trial.number, seg["member"], seg["generation"], seg["start"], seg["end"],
                   None if value is None else value * scale, seg.get("copied_from"))


def lineage(data: TuneData) -> Lineage:
    """The population's segments on their members' tracks and who copied whom."""
    scale = objective_scale(data.objectives[0])
    ended = [_segment(t, scale) for t in segments(data)]
    best = _best_number(data)
    path = [_segment(t, scale) for t in lineage_of(data, best)] if best is not None else []
    on_path = {s.number for s in path}
    copies = [Copy(s.copied_from, s.member, s.start, s.number, s.number in on_path)
              for s in ended if s.copied_from is not None]
    return Lineage(data.objectives[0], data.directions[0], sorted({s.member for s in ended}),
                   max((s.end for s in ended), default=0), ended, copies, path, best)


def _log_axis(values: list[float]) -> bool:
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > LOG_RATIO


def _as_number(value: Any) -> float:
    return float(value) if is_number(value) else math.nan


def _steps(per_epoch: list[float]) -> np.ndarray:
    return np.array([*per_epoch, per_epoch[-1]], dtype=float) if per_epoch else np.array([], dtype=float)


def schedule_panels(data: TuneData) -> list[SchedulePanel]:
    """Per key of the space, the value each member trained with in each epoch (from its own segments' settings:
    a jump is an explore, most often where it copied another), and the best member's schedule (its lineage's, as
    best.toml holds it); empty when no segment has ended."""
    ended = segments(data)
    if not ended:
        return []
    epochs = max(t.pbt["end"] for t in ended if t.pbt is not None)
    edges = np.arange(epochs + 1)
    trained: dict[int, dict[int, dict[str, Any]]] = {}  # member -> epoch -> settings
    for trial in ended:
        seg = trial.pbt or {}
        for epoch in range(seg["start"] + 1, seg["end"] + 1):
            trained.setdefault(seg["member"], {})[epoch] = settings_at(trial.params, epoch)
    best = _best_number(data)
    best_params = next((t.params for t in data.trials if t.number == best), None)
    panels = []
    for key in schedule_keys(data):
        lines = [ScheduleLine(f"member {m}", m, edges,
                              _steps([_as_number(trained[m].get(e, {}).get(key)) for e in range(1, epochs + 1)]))
                 for m in sorted(trained)]
        best_line = None
        if best_params is not None:
            best_line = ScheduleLine(f"best: trial {best}", None, edges,
                                     _steps([_as_number(settings_at(best_params, e).get(key))
                                             for e in range(1, epochs + 1)]))
        values = [float(v) for line in lines for v in line.values]
        panels.append(SchedulePanel(key, _log_axis(values), lines, best_line))
    return panels


def best_schedule(data: TuneData) -> list[ScheduleRow]:
    """The best member's schedule per epoch: the settings of its experiment (best.toml) in effect, the member of its
    lineage that trained the epoch, its value there, and where the state was copied; empty without a best segment."""
    best = _best_number(data)
    if best is None:
        return []
    params = next(t.params for t in data.trials if t.number == best)
    rows = []
    for trial in lineage_of(data, best):
        seg = trial.pbt or {}
        for epoch in range(seg["start"] + 1, seg["end"] + 1):
            exploit = epoch == seg["start"] + 1 and seg.get("copied_from") is not None
            rows.append(ScheduleRow(epoch, seg["member"], settings_at(params, epoch), _value(trial, epoch),
                                    seg["copied_from"] if exploit else None,
                                    dict(seg.get("changed") or {}) if exploit else {}))
    return rows
