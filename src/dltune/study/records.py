"""Plain records of a study's runs, as stored and as the report layer reads them, and the one writer and reader of
a run's trial attributes (ablations and searches store a run alike)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = ["Curve", "RUN_ATTRS", "AblationData", "PairResult", "TrialRecord", "TuneData", "Variant", "pair_result",
           "run_attrs", "run_folder", "run_location", "store_run", "store_run_dir", "trial_record"]


class Curve(Protocol):
    """A trial's per-epoch values, as ASHA and its rank check read them: an Optuna FrozenTrial, or a replay's curve."""

    @property
    def number(self) -> int: ...

    @property
    def intermediate_values(self) -> Mapping[int, float]: ...

# what a trial stores of the run it trained, read back by pair_result and trial_record
RUN_ATTRS = ("status", "test", "epochs", "train_seconds", "samples_per_second", "parameters", "run_dir",
             "divergence", "config_toml", "environment")


class _Trial(Protocol):
    def set_user_attr(self, key: str, value: Any) -> None: ...


def run_attrs(run: Mapping[str, Any], out: str | Path) -> dict[str, Any]:
    """A run's record (RunResult.record()) as a trial's user attributes: what the one writer of RUN_ATTRS writes,
    its run folder recorded relative to the study's output folder `out` (run_location)."""
    attrs = {key: run.get(key) for key in RUN_ATTRS}
    if run.get("run_dir"):
        attrs.update(run_location(run["run_dir"], out))
    return attrs


def run_location(run_dir: str | Path, out: str | Path) -> dict[str, str]:
    """Where a study's run is, as its trial stores it: the run folder relative to the study's output folder
    ("trials/trial-4"), which moves with the folder, and that folder's absolute path (out_dir), for a reader that
    has only a database server's storage."""
    base = Path(out).absolute()
    return {"run_dir": Path(os.path.relpath(Path(run_dir).absolute(), base)).as_posix(), "out_dir": str(base)}


def run_folder(attrs: Mapping[str, Any], base: str | Path | None) -> str | None:
    """The run folder that a trial's attributes record, found: relative to the study's output folder `base` (the
    folder of its study.db or journal.log; None for a database server's storage), else to the output folder the
    trial recorded (out_dir). A record of dltune before 2026-12 holds the folder relative to the working folder of
    the command that made it, and no out_dir: it is looked for there and, when the study's folder moved, by its last
    parts inside `base` (trials/trial-4, runs/VARIANT/seed-1). A folder found nowhere is the first place looked."""
    recorded = attrs.get("run_dir")
    if not recorded or Path(recorded).is_absolute():
        return recorded
    path = Path(recorded)
    places = [Path(b) / path for b in (base, attrs.get("out_dir")) if b]
    if not attrs.get("out_dir"):
        places.append(path)
        places += [Path(base) / Path(*path.parts[-k:]) for k in range(1, len(path.parts))] if base else []
    return str(next((p for p in places if p.is_dir()), places[0]))


def store_run_dir(trial: _Trial, run_dir: str | Path, out: str | Path) -> None:
    """Where the trial's run is written (run_location), stored as it starts (store_run writes it again, with the
    whole run): a folder that a killed trial left half-written is found by it and removed
    (study.sharing.sweep_abandoned)."""
    for key, value in run_location(run_dir, out).items():
        trial.set_user_attr(key, value)


def store_run(trial: _Trial, run: Mapping[str, Any], out: str | Path) -> None:
    """Write a run's record (RunResult.record()) into a trial's user attributes (run_attrs), one by one."""
    for key, value in run_attrs(run, out).items():
        trial.set_user_attr(key, value)


def _run_fields(attrs: Mapping[str, Any], base: str | Path | None) -> dict[str, Any]:
    """The run's fields that PairResult and TrialRecord share, from a trial's attributes; the run folder found
    against the study's output folder `base` (run_folder)."""
    return {"status": attrs.get("status"), "test": attrs.get("test") or {}, "epochs": attrs.get("epochs") or [],
            "train_seconds": attrs.get("train_seconds"), "samples_per_second": attrs.get("samples_per_second"),
            "parameters": attrs.get("parameters"), "run_dir": run_folder(attrs, base)}


@dataclass(frozen=True)
class Variant:
    """One row of an ablation: a name and the dotted-path overrides it applies to the baseline
    (in cumulative mode, with those of every variant before it)."""

    name: str
    changes: dict[str, Any]  # its own overrides, as written in the experiment file
    applied: dict[str, Any]  # everything applied to the baseline (cumulative: the running union)


@dataclass(frozen=True)
class PairResult:
    """One (variant, seed) run."""

    variant: str
    seed: int
    status: str  # completed | stopped | diverged
    metric: float | None  # the ablation's metric (e.g. test.accuracy); None when diverged
    test: dict[str, float]
    epochs: list[dict[str, Any]]  # the run's per-epoch history (train.loss, val.*, lr, batch_size, ...)
    train_seconds: float
    samples_per_second: float
    parameters: int
    run_dir: str | None = None


@dataclass(frozen=True)
class AblationData:
    """Everything a table or report shows, read back from the storage alone."""

    study: str
    metric: str  # dotted path, e.g. "test.accuracy"
    higher_is_better: bool
    mode: str  # independent | cumulative
    seeds: list[int]
    variants: list[Variant]  # the baseline first
    results: list[PairResult]
    environment: dict[str, Any] = field(default_factory=dict)
    config_toml: str = ""  # the resolved baseline experiment

    def of(self, variant: str) -> list[PairResult]:
        """The runs of one variant, by seed."""
        return sorted((r for r in self.results if r.variant == variant), key=lambda r: r.seed)


@dataclass(frozen=True)
class TrialRecord:
    """One trial of a search."""

    number: int
    state: str  # COMPLETE | PRUNED | FAIL | INTERRUPTED (a FAIL that the search's interrupt made) | RUNNING | WAITING
    values: list[float] | None  # one per objective; None unless COMPLETE
    params: dict[str, Any]  # the dotted-path overrides the trial sampled
    epochs: list[dict[str, Any]]  # per-epoch history, as PairResult.epochs (empty for a trial that never ran)
    test: dict[str, float]
    train_seconds: float | None
    parameters: int | None
    pruned_at: int | None = None  # the epoch a pruned trial stopped after
    error: str | None = None  # why a failed trial failed
    interrupted: str | None = None  # why an interrupted trial ended, and the trial that runs its configuration again
    run_dir: str | None = None
    status: str | None = None  # the run's: completed | stopped | diverged (None: it never ended)
    samples_per_second: float | None = None
    # a PBT segment (study.pbt_search): member, generation, start and end (epochs), source (the trial whose state it
    # went on from), copied_from (the member it copied, or None), changed ({key: how}), values ({epoch: value})
    pbt: dict[str, Any] | None = None


@dataclass(frozen=True)
class TuneData:
    """Everything a search's report shows, read back from the storage alone."""

    study: str
    objectives: list[str]  # dotted paths, e.g. ["val.accuracy", "latency"]
    directions: list[str]  # "maximize" | "minimize", one per objective
    trials: list[TrialRecord]
    best: list[int]  # trial numbers: the best trial, or the Pareto front of a multi-objective study
    importances: dict[str, float] | None = None  # Optuna's parameter importances for the first objective
    environment: dict[str, Any] = field(default_factory=dict)
    config_toml: str = ""  # the experiment with its [search] section
    best_config_toml: str | None = None  # the best trial's resolved experiment (runnable)
    best_pruned: int | None = None  # no trial complete: the pruned trial that went furthest, best there
    best_pruned_config_toml: str | None = None  # its resolved experiment (trained to the end, when run)
    top_k: int | None = None  # search.top_k: the trials listed in the results (None: every complete trial)
    sampler: str = ""
    pruner: str = ""
    # asha: the rungs whose ranks disagreed with later ranks, and so stopped holding trials back (study.rank_check):
    # {"epoch", "rho", "p", "pairs", "later", "first_rung", "said"} each, in the order found
    rungs_moved: list[dict[str, Any]] = field(default_factory=list)
    # not stored: why the run of `tune` that returned this stopped short of its target (trial after trial failed)
    stopped: str | None = None


def pair_result(attrs: Mapping[str, Any], base: str | Path | None = None) -> PairResult:
    """An ablation's (variant, seed) run from its trial's attributes: the one reader, with trial_record. `base`: the
    study's output folder, where known (run_folder)."""
    return PairResult(variant=attrs["variant"], seed=attrs["seed"], metric=attrs.get("metric"),
                      **_run_fields(attrs, base))


def trial_record(number: int, state: str, values: list[float] | None, attrs: Mapping[str, Any],
                 base: str | Path | None = None) -> TrialRecord:
    """A search's trial from its number, state, values and attributes. `base`: the study's output folder, where
    known (run_folder)."""
    interrupted = attrs.get("interrupted") if state == "FAIL" else None
    return TrialRecord(number=number, state="INTERRUPTED" if interrupted else state, values=values,
                       params=attrs.get("overrides", {}), pruned_at=attrs.get("pruned_at"), error=attrs.get("error"),
                       interrupted=interrupted, pbt=attrs.get("pbt"), **_run_fields(attrs, base))
