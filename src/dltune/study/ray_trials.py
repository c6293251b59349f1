"""A search's trials under Ray Tune: the trainable, which trains one trial with dltune's `train` and reports each
epoch to Ray, and Ray's OptunaSearch on the stored study, which records every trial there as the optuna backend
does (records.store_run). Imported by dltune.study.ray_backend only once Ray is known to be installed."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch
from ray.tune.stopper import Stopper

from dltune.experiment.config import override, to_toml
from dltune.files import claim_dir
from dltune.study.records import TrialRecord, store_run
from dltune.study.studies import Prepared, record, stored_trial
from dltune.study.trials import handed_to_train, interrupt, lookup, objective_values, tell, trial_data, trial_track
from dltune.tuner.auto import train  # the function the optuna backend's trials call

__all__ = ["EPOCH", "MAX_FAILURES_IN_A_ROW", "NUMBER", "OBJECTIVE", "OVERRIDES", "PAYLOAD", "Interrupt", "Job",
           "StudySearch", "ending", "next_suggestion", "run_trial", "trial_name"]

# a Ray trial's config: its Optuna trial's number and the dotted-path overrides sampled for it
NUMBER, OVERRIDES = "trial", "overrides"
# what a Ray trial reports: the epoch and the first objective's value then (the scheduler's time and metric), and
# as JSON text (Ray flattens nested results) the epoch's record, or at the end the run's record and values
EPOCH, OBJECTIVE, PAYLOAD = "epoch", "objective", "dltune"
MAX_FAILURES_IN_A_ROW = 10  # as the optuna backend's workers: a search whose every trial fails stops
WORKER_FAILED = ("the trial's Ray worker failed (it died, or raised outside training); Ray's log of it is in the "
                 "output folder's ray/ and in Ray's session logs")


@dataclass(frozen=True)
class Job:
    """What every trial of one search needs, sent to Ray's workers once (its object store)."""

    prepared: Prepared
    out: Path  # the search's output folder; trials train in out/trials/trial-N
    study_name: str
    per_epoch: str | None  # the first objective's per-epoch counterpart (trials.per_epoch_objective)


def trial_name(trial: Trial) -> str:
    """A Ray trial's name and folder: its Optuna trial's number."""
    return f"trial-{trial.config[NUMBER]}"


def run_trial(config: dict[str, Any], job: Job) -> None:
    """One trial: `train` on the trial's overrides in out/trials/trial-N, each epoch reported to Ray but the last,
    which goes with the run's record and values in the final report (so a scheduler that stops a trial at its last
    epoch cannot cut that record off). A trial that raises reports its error and ends: the search goes on."""
    number, overrides = config[NUMBER], config[OVERRIDES]
    last: dict[str, Any] = {EPOCH: 0, OBJECTIVE: math.nan}
    try:
        run_config = override(job.prepared.base, overrides)
        epochs = run_config.train.epochs
        run_dir = claim_dir(job.out / "trials" / f"trial-{number}")  # -2, -3: another study's trial had it
        data = trial_data(job.prepared, run_config)

        def on_epoch(epoch: int, epoch_record: Mapping[str, Any]) -> None:
            value = lookup(epoch_record, job.per_epoch) if job.per_epoch else None
            last.update({EPOCH: epoch, OBJECTIVE: value if value is not None and math.isfinite(value) else math.nan})
            if epoch < epochs:  # Ray ends the trial inside report() when its scheduler stops it here
                run = {"run": {"config_toml": to_toml(run_config)}} if epoch == 1 else {}
                tune.report({**last, PAYLOAD: _json({"epoch": epoch_record, **run})})

        result = train(run_config, on_epoch=on_epoch, out_dir=run_dir, data=handed_to_train(run_config, data),
                       model=job.prepared.model, track=trial_track(job.study_name, number, job.out))
        final: dict[str, Any] = {"record": result.record()}
        if result.status == "diverged":
            assert result.divergence is not None
            final["error"] = f"training {result.divergence.describe()}"
        else:
            final["values"], final["compressed"] = objective_values(result, job.prepared.objectives, run_dir, data)
    except Exception as e:  # recorded with the trial, which fails; the search goes on
        final = {"error": f"{type(e).__name__}: {e}"}
    tune.report({**last, PAYLOAD: _json({"final": final})})


def _json(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, default=str)


def next_suggestion(finished: int, running: int, target: int, *, late: bool, failed_in_a_row: int) -> str:
    """The search's next move when Ray asks for a trial: "start" one, "wait" (ask again later), or "finished"."""
    if late or finished >= target or failed_in_a_row >= MAX_FAILURES_IN_A_ROW:
        return "finished"
    return "start" if finished + running < target else "wait"


def ending(final: Mapping[str, Any] | None, epochs: int, error: bool, interrupted: bool) -> str:
    """How a Ray trial that ended goes into the study, from what it reported: COMPLETE once it sent its values,
    FAIL with an error; without a final report, PRUNED when it reported epochs and a scheduler stopped it, FAIL when
    its worker failed, the search was interrupted, or it never reported an epoch."""
    if final is not None:
        return "FAIL" if final.get("error") else "COMPLETE"
    if error or interrupted or epochs == 0:
        return "FAIL"
    return "PRUNED"


class StudySearch(OptunaSearch):
    """Ray's OptunaSearch on the stored study with the optuna backend's sampler, its space sampled by a
    define-by-run function (SearchSpace.sample: conditional entries included), and each ended trial written into
    the study as the optuna backend writes it: the run's record (records.store_run), pruned_at, error, compressed;
    the first objective's per-epoch values as intermediate values (one objective; Optuna keeps none for several)."""

    def __init__(self, study_name: str, storage: optuna.storages.BaseStorage, sampler: optuna.samplers.BaseSampler,
                 prepared: Prepared, out: Path, *, target: int, deadline: float | None,
                 on_trial: Callable[[TrialRecord], None] | None, should_stop: Callable[[], bool] | None) -> None:
        self._prepared = prepared
        self._out = out  # the search's output folder, which the trials' run folders are recorded against
        self._target = target  # finished trials (complete or pruned) the study aims for
        self._deadline = deadline  # time.monotonic(): no trial starts after it
        self._on_trial = on_trial
        self.should_stop = should_stop
        self.interrupted = False
        self._epochs: dict[str, dict[int, dict[str, Any]]] = {}  # Ray trial id -> epoch -> its record
        self._runs: dict[str, dict[str, Any]] = {}  # Ray trial id -> what the first epoch said of the run
        self._reported: dict[str, set[int]] = {}  # Ray trial id -> epochs whose value the study holds
        self.failed_in_a_row = 0
        self.last_error: str | None = None
        # the study exists (store_study): OptunaSearch loads it, directions and all; `mode` is the first's
        super().__init__(space=self._define, metric=OBJECTIVE, mode="max" if prepared.directions[0] == "maximize"
                         else "min", sampler=sampler, study_name=study_name, storage=storage)
        ended = (TrialState.COMPLETE, TrialState.PRUNED)
        self.finished = len(self.optuna_study.get_trials(deepcopy=False, states=ended))

    @property
    def optuna_study(self) -> optuna.Study:
        """The study OptunaSearch loaded by its name and storage (Ray types it optional: set before any search)."""
        assert self._ot_study is not None
        return self._ot_study

    def __getstate__(self) -> dict[str, Any]:
        # Ray pickles its search algorithm into its experiment folder; this search's state is the study itself
        return {}

    def save(self, checkpoint_path: str) -> None:
        """Ray's experiment checkpoints hold nothing of this search: the study in the storage is its state."""

    def _define(self, trial: optuna.Trial) -> dict[str, Any]:
        overrides = self._prepared.space.sample(trial)
        trial.set_user_attr("overrides", overrides)
        return {NUMBER: trial.number, OVERRIDES: overrides}

    # Ray types suggest as returning a dict or None, yet its own Searcher.FINISHED, a str, is the answer that ends a
    # search (ray.tune.search.searcher): the override returns it as Ray's searchers do
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        """A new trial while the finished and running ones fall short of the target; None (ask again later) while
        running trials may yet reach it (or fail, and leave room); FINISHED once the target is reached, the deadline
        has passed, or MAX_FAILURES_IN_A_ROW trials in a row failed."""
        move = next_suggestion(self.finished, len(self._ot_trials) - len(self._completed_trials), self._target,
                               late=self._deadline is not None and time.monotonic() >= self._deadline,
                               failed_in_a_row=self.failed_in_a_row)
        if move == "finished":
            return Searcher.FINISHED
        return None if move == "wait" else super().suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self._take(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        final = self._take(trial_id, result) if result else None
        epochs = self._epochs.pop(trial_id, {})
        self._reported.pop(trial_id, None)
        state = ending(final, len(epochs), error, self.interrupted)
        trial = self._ot_trials[trial_id]
        run = (final or {}).get("record")
        if run is None and epochs:  # stopped before its end: the run as far as it reported
            run = {"status": "stopped", "epochs": [epochs[e] for e in sorted(epochs)], **self._runs.pop(trial_id, {})}
        if run is not None:
            store_run(trial, run, self._out)
        message = (final or {}).get("error") or (WORKER_FAILED if error else None)
        if message is not None:
            trial.set_user_attr("error", message)
        if state == "PRUNED":
            trial.set_user_attr("pruned_at", max(epochs))
        if compressed := (final or {}).get("compressed"):
            trial.set_user_attr("compressed", compressed)
        if state == "FAIL" and self.interrupted and message is None:  # cut short: recorded so, and queued again
            interrupt(self.optuna_study, trial, None)
        else:
            values = (final or {}).get("values") if state == "COMPLETE" else None
            tell(self.optuna_study, trial, values, state=TrialState[state])
        self._completed_trials.add(trial_id)
        self.finished += state in ("COMPLETE", "PRUNED")
        self.failed_in_a_row = self.failed_in_a_row + 1 if state == "FAIL" and not self.interrupted else 0
        self.last_error = message if state == "FAIL" else self.last_error
        if self._on_trial is not None:
            self._on_trial(record(stored_trial(self.optuna_study, trial.number)))

    def fail_unfinished(self) -> None:
        """Mark failed every trial asked for and not yet told (Ray stopped before their end was seen); interrupted
        and queued again, where the search was interrupted."""
        for trial_id, trial in self._ot_trials.items():
            if trial_id not in self._completed_trials:
                if self.interrupted:
                    interrupt(self.optuna_study, trial, None)
                else:
                    tell(self.optuna_study, trial, state=TrialState.FAIL)
                self._completed_trials.add(trial_id)

    def _take(self, trial_id: str, result: Mapping[str, Any]) -> dict[str, Any] | None:
        """Keep what one report says (the epoch's record, the run) and report the epoch's value to the study; the
        final payload when this is the trial's final report."""
        payload = json.loads(result.get(PAYLOAD) or "{}")
        epoch, value = int(result.get(EPOCH) or 0), result.get(OBJECTIVE)
        if "epoch" in payload:
            self._epochs.setdefault(trial_id, {})[epoch] = payload["epoch"]
        if "run" in payload:
            self._runs[trial_id] = payload["run"]
        reported = self._reported.setdefault(trial_id, set())
        single = len(self._prepared.objectives) == 1
        if (single and trial_id in self._ot_trials and epoch > 0 and epoch not in reported
                and isinstance(value, (int, float)) and math.isfinite(value)):
            self._ot_trials[trial_id].report(value, epoch)
            reported.add(epoch)
        return payload.get("final")


class Interrupt(Stopper):
    """Ends the whole Ray run once `should_stop()` says so (the CLI's first Ctrl-C), at Ray's next step."""

    def __init__(self, search: StudySearch) -> None:
        self._search = search

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        if self._search.should_stop is not None and self._search.should_stop():
            self._search.interrupted = True
        return self._search.interrupted

    def __getstate__(self) -> dict[str, Any]:
        return {}  # pickled into Ray's experiment folder with the run's settings; nothing of it is needed there
