"""The objective of a search's trial in Optuna's loop (study.worker): sample the trial's configuration, train it with
each epoch's value reported to the pruner or to ASHA's rungs, and end with its objectives' values, pruned, or failed.

A trial paused at a rung and saved to disk (checkpoints.Paused) is called again with `resume=True`, and goes on
from its checkpoint. With several objectives, the per-epoch values go to a twin trial in a single-objective shadow
study (studies.shadow_study), since Optuna's pruners work on one objective only.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from dltune.experiment.config import override
from dltune.files import claim_dir
from dltune.run.assembly import Splits
from dltune.run.checkpoints import Paused
from dltune.run.results import RunResult
from dltune.study.asha import GO, SPILL, STOP, Ladder
from dltune.study.records import store_run, store_run_dir
from dltune.study.studies import Prepared
from dltune.study.trials import (
    Objective,
    handed_to_train,
    lookup,
    objective_values,
    per_epoch_objective,
    trial_data,
    trial_track,
)
from dltune.tuner.auto import train  # train.auto: each run finds its own settings

__all__ = ["Objective", "make_objective"]

OnEpoch = Callable[[int, Mapping[str, Any]], str | None]


@dataclass(frozen=True)
class _TrialRun:
    """One trial's run: the trial, the trial its per-epoch values go to (itself, or its twin in the shadow study),
    and its run folder."""

    trial: optuna.Trial
    proxy: optuna.Trial
    shadow: optuna.Study | None
    run_dir: Path

    def tell_twin(self, value: float | None = None, state: TrialState | None = None) -> None:
        """End the twin in the shadow study, where there is one, as the trial itself ends."""
        if self.shadow is not None:
            self.shadow.tell(self.proxy, value, state=state)


def make_objective(prepared: Prepared, out: Path, shadow: optuna.Study | None, should_stop: Callable[[], bool] | None,
                   ladder: Ladder, study_name: str) -> Objective:
    """The objective of the search's trials, which train in out/trials/trial-N."""
    per_epoch = per_epoch_objective(prepared.objectives)
    on_disk: dict[int, _TrialRun] = {}  # trials saved to disk at a rung

    def objective(trial: optuna.Trial, resume: bool = False) -> float | list[float]:
        overrides = prepared.space.sample(trial)  # on a resume, the values it drew before
        trial.set_user_attr("overrides", overrides)
        config = override(prepared.base, overrides)
        run = on_disk.pop(trial.number) if resume else _start(trial, shadow, out)
        pruned_at: list[int] = []
        on_epoch = _on_epoch(run, ladder, per_epoch, should_stop, pruned_at, reported=resume)
        try:
            data = trial_data(prepared, config)
            result = train(config, on_epoch=on_epoch, out_dir=run.run_dir, data=handed_to_train(config, data),
                           model=prepared.model, track=trial_track(study_name, trial.number, out), resume=resume)
        except Paused as e:
            on_disk[trial.number] = run
            e.abandon = lambda: _abandon(on_disk, run)
            raise
        except BaseException as e:  # recorded with the trial, which fails; the study goes on (not on Ctrl-C)
            if isinstance(e, Exception):
                trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            run.tell_twin(state=TrialState.FAIL)
            raise
        store_run(trial, result.record(), out)
        return _values(run, result, pruned_at, prepared.objectives, data)

    return objective


def _start(trial: optuna.Trial, shadow: optuna.Study | None, out: Path) -> _TrialRun:
    """A trial's first run: its twin asked for in the shadow study, its run folder claimed and recorded."""
    proxy = shadow.ask() if shadow is not None else trial
    run_dir = claim_dir(out / "trials" / f"trial-{trial.number}")  # -2, -3: another study's trial had it
    store_run_dir(trial, run_dir, out)
    return _TrialRun(trial, proxy, shadow, run_dir)


def _abandon(on_disk: dict[int, _TrialRun], run: _TrialRun) -> None:
    """Give up a trial that waits on disk (the search stops): its twin failed, its run folder removed."""
    del on_disk[run.trial.number]
    run.tell_twin(state=TrialState.FAIL)
    shutil.rmtree(run.run_dir, ignore_errors=True)


def _on_epoch(run: _TrialRun, ladder: Ladder, per_epoch: str | None, should_stop: Callable[[], bool] | None,
              pruned_at: list[int], reported: bool) -> OnEpoch:
    """The trial's hook out of the training loop: report the epoch's value, then wait at a rung for the ladder's
    word, or ask the pruner. "pause" saves the run to disk, "stop" ends it (its epoch appended to `pruned_at`).
    `reported`: the first epoch's value is in the study already (a resumed trial asks again at its rung)."""
    trial, proxy = run.trial, run.proxy

    def on_epoch(epoch: int, record: Mapping[str, Any]) -> str | None:
        nonlocal reported
        if should_stop is not None and should_stop():
            raise KeyboardInterrupt
        value = lookup(record, per_epoch) if per_epoch else None
        if value is None or not math.isfinite(value):
            return None
        if not reported:
            proxy.report(value, epoch)
        reported = False
        rung = epoch in ladder.epochs
        if rung:  # other workers see that this trial waits, and need not wait for it to reach their rung
            trial.set_user_attr("waiting_at", epoch)
        word = ladder.at_rung(proxy.number, epoch)
        if word == SPILL:  # saved to disk, still waiting at the rung (waiting_at stays)
            return "pause"
        if rung:
            trial.set_user_attr("waiting_at", None)
        if word == STOP or proxy.should_prune():
            pruned_at.append(epoch)
            return "stop"
        assert word == GO
        return None

    return on_epoch


def _values(run: _TrialRun, result: RunResult, pruned_at: list[int], objectives: list[str],
            data: Splits) -> float | list[float]:
    """The trial's value (one objective) or values once its run ended; a pruned run raises TrialPruned, and a
    diverged one RuntimeError, each recorded with the trial and its twin."""
    trial = run.trial
    if pruned_at:
        trial.set_user_attr("pruned_at", pruned_at[0])
        run.tell_twin(state=TrialState.PRUNED)
        raise optuna.TrialPruned(f"pruned after epoch {pruned_at[0]}")
    if result.status == "diverged":
        assert result.divergence is not None
        trial.set_user_attr("error", f"training {result.divergence.describe()}")
        run.tell_twin(state=TrialState.FAIL)
        raise RuntimeError(trial.user_attrs["error"])
    values, compressed = objective_values(result, objectives, run.run_dir, data)
    if compressed:
        trial.set_user_attr("compressed", compressed)
    run.tell_twin(values[0])
    return values[0] if len(values) == 1 else values
