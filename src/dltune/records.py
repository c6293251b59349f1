"""Plain records of a study's runs, as stored and as the report layer reads them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["AblationData", "PairResult", "TrialRecord", "TuneData", "Variant"]


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
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    values: list[float] | None  # one per objective; None unless COMPLETE
    params: dict[str, Any]  # the dotted-path overrides the trial sampled
    epochs: list[dict[str, Any]]  # per-epoch history, as PairResult.epochs (empty for a trial that never ran)
    test: dict[str, float]
    train_seconds: float | None
    parameters: int | None
    pruned_at: int | None = None  # the epoch a pruned trial stopped after
    error: str | None = None  # why a failed trial failed
    run_dir: str | None = None


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
    sampler: str = ""
    pruner: str = ""
