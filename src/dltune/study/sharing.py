"""How workers share one stored study: which of two trials taken for the last place runs, whether another
worker's trial is still training, what becomes of a trial whose worker died before its first heartbeat, and of the
run folder that a killed trial left."""

from __future__ import annotations

import shutil
import time
from datetime import datetime
from pathlib import Path

import optuna
from optuna.trial import TrialState

from dltune.run.checkpoints import held
from dltune.study.optuna_adapter import beating_trial_ids, rdb_backend, storage_of, trial_id, trial_ids
from dltune.study.records import run_folder
from dltune.study.retry import PatientStorage

# no live worker takes this long from taking a trial to its first heartbeat (Heartbeat.add is the trial's first step)
ORPHAN_SECONDS = 60.0


def training_elsewhere(trials: list[optuna.trial.FrozenTrial], beats: bool,
                        seen: dict[int, tuple[int, float]]) -> bool:
    """Whether another worker's trial is training: running and not waiting at a rung (none of this
    process's trials trains while the search loop asks). Where the storage has no heartbeats (a journal
    file), a trial that shows no new epoch for max(60 s, 3 of its mean epochs) counts as dead here.
    `seen`: trial number -> (epochs reported, when that count was first seen), kept between calls."""
    now, live = time.monotonic(), False
    for t in trials:
        if t.state != TrialState.RUNNING or t.user_attrs.get("waiting_at") is not None:
            continue
        if beats:
            return True  # a dead worker's trial goes stale and is failed by fail_stale_trials
        epochs = len(t.intermediate_values)
        if seen.get(t.number, (None,))[0] != epochs:
            seen[t.number] = (epochs, now)
        started = t.datetime_start.timestamp() if t.datetime_start else time.time()
        mean_epoch = (time.time() - started) / max(1, epochs)
        live = live or now - seen[t.number][1] < max(60.0, 3 * mean_epoch)
    return live


def claim_trial(study: optuna.Study, target: int) -> optuna.Trial | None:
    """A new trial, or None when the study reached its target meanwhile: every finished trial and every RUNNING
    trial holds a place, and a trial that finds no place left goes back to the queue (WAITING, never run) for a
    later turn or a later, larger search to take.

    Two workers that both saw room for the last place both take a trial, and each counts after its own write,
    so at least one of them sees the other: at most one runs. Both may yield; the caller waits a random moment
    before its next turn, so that they do not meet again in step. No order between the two decides it: by
    number, a trial from the queue (a dead worker's, queued again by Optuna's retry, with an old number) ran
    beside the trial taken before it (11 finished for a target of 10, seen in CI); by start time, the order is
    the workers' clocks, not the storage's (13 for 12 on a journal file, seen in CI)."""
    trial = study.ask()
    taken = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
                for t in study.get_trials(deepcopy=False) if t.number != trial.number)
    if taken < target:
        return trial
    storage_of(study).set_trial_state_values(trial_id(study, trial.number), TrialState.WAITING)
    return None


def sweep_abandoned(trials: list[optuna.trial.FrozenTrial], swept: set[int]) -> list[str]:
    """Remove the run folders that killed trials left half-written; the folders removed.

    A trial failed as a dead worker's (a stale heartbeat, or RUNNING when a search on a journal file starts
    again) leaves its run folder as the kill found it: config.toml, maybe a checkpoint, no metrics.json. Such a
    folder of a failed trial that no process holds (checkpoints.held) is removed, so that every run folder of a
    study is whole or absent. `swept`: trial numbers looked at before (each is looked at once)."""
    removed = []
    for t in trials:
        if t.state != TrialState.FAIL or t.number in swept:
            continue
        swept.add(t.number)
        run_dir = run_folder(t.user_attrs, None)  # where the process that ran it wrote it
        if run_dir and Path(run_dir).is_dir() and not (Path(run_dir) / "metrics.json").exists() and not held(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
            removed.append(run_dir)
    return removed


def adopt_orphans(study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> list[int]:
    """Let Optuna's stale-trial check see RUNNING trials that never beat; their numbers.

    A worker killed between taking a trial and its first heartbeat leaves a RUNNING trial with no heartbeat,
    which Optuna's check skips (it fails only trials whose last beat is too old), so the search would wait
    for it forever. A RUNNING trial older than ORPHAN_SECONDS with no heartbeat gets one beat here and none
    after: it goes stale after the grace period and is failed and queued again, as any dead worker's trial is.
    Storages without heartbeats (a journal file) go by the trial's progress instead (`training_elsewhere`)."""
    storage = rdb_backend(storage_of(study))
    if storage is None or storage.heartbeat_interval is None:
        return []
    now = datetime.now()  # datetime_start is the taking worker's local time, as Optuna records it
    old = [t.number for t in trials if t.state == TrialState.RUNNING and t.datetime_start is not None
           and (now - t.datetime_start).total_seconds() > ORPHAN_SECONDS]
    if not old:
        return []
    ids = trial_ids(study, old)  # trial number -> the storage's id

    def read() -> set[int]:
        return beating_trial_ids(storage, ids.values())

    # a database server's storage (dltune.study.retry) tries the read again while its connection is lost
    beating = storage.patiently(read) if isinstance(storage, PatientStorage) else read()
    orphans = [number for number in old if ids[number] not in beating]
    for number in orphans:
        storage.record_heartbeat(ids[number])
    return orphans
