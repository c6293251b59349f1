"""Population-based training as a study (search.pruner = "pbt"): the decisions of study.pbt carried out through the
storage, by one worker or several, on any storage a search runs on.

Each generation of each member is a trial of the study, a *segment*: it goes on from a checkpoint (its own previous
segment's, or the member's it copies), trains to the generation's end, and pauses there (checkpoints.Paused), its
state saved in its run folder; a segment that ends before the run's last epoch is told PRUNED (the study's complete
trials are the members' whole runs), the last one COMPLETE, with the whole run's results. A segment's attributes
say which member and generation it is, whose state it went on from, and how its settings changed (`pbt`), and its
experiment (`overrides`): the first segment's settings, then train.changes, one entry per explore. The best
member's last segment is thus an experiment that `dltune train` reproduces, schedule and all (best.toml).

Segments are queued WAITING and taken by Optuna's ask(), which gives a waiting trial to one worker only. The next
generation is queued once every member has ended this one, by whichever worker sees it first, under a lock on the
storage (a file lock beside a SQLite or journal file, an advisory lock on PostgreSQL), each missing segment once; a
segment that a kill cut short is queued again with its attributes (trials.interrupt, Optuna's stale-trial retry,
studies.requeue_running), and goes on from the same checkpoint. The decision depends on the values alone, so a
search that was killed and resumed reaches the same lineage as one that never stopped.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from dltune.errors import ConfigError
from dltune.experiment.config import ExperimentConfig, override, to_toml
from dltune.experiment.sections import SearchConfig
from dltune.files import claim_dir, write_text
from dltune.run.checkpoints import CHECKPOINT, STATE, Paused, has_checkpoint
from dltune.run.runtime import release_freed_memory
from dltune.study.engines import Heartbeat, folder_of, storage_file
from dltune.study.optuna_adapter import rdb_backend, storage_of, take_waiting
from dltune.study.pbt import Member, Next, boundaries, decide, draw
from dltune.study.records import TrialRecord, run_folder, store_run, store_run_dir
from dltune.study.sharing import adopt_orphans, sweep_abandoned
from dltune.study.space import Entry, encode
from dltune.study.studies import FailingSearch, Prepared, record, stored_trial
from dltune.study.trials import (
    MAX_FAILURES_IN_A_ROW,
    Objective,
    handed_to_train,
    lookup,
    objective_values,
    per_epoch_objective,
    run_and_tell,
    trial_data,
    trial_track,
)
from dltune.tuner.auto import train  # as a search's trials train (study.objective)

__all__ = ["PENDING", "first_settings", "latest_segments", "pbt_done", "pbt_target", "queue_segments", "settings_of",
           "work_pbt"]

PENDING = (TrialState.WAITING, TrialState.RUNNING)
OnTrial = Callable[[TrialRecord], None]


def pbt_target(config: ExperimentConfig) -> int:
    """The segments of a whole PBT search: population × generations."""
    return config.search.population * len(boundaries(config.train.epochs, config.search.interval))


def pbt_done(trials: Sequence[FrozenTrial]) -> int:
    """The segments of a PBT search that have ended (each member's generation once)."""
    return sum(t.state not in PENDING for t in latest_segments(trials).values())


def latest_segments(trials: Sequence[FrozenTrial]) -> dict[tuple[int, int], FrozenTrial]:
    """Each (member, generation)'s segment: the last trial queued for it (a segment queued again after a kill has a
    higher number than the trial it replaces)."""
    latest: dict[tuple[int, int], FrozenTrial] = {}
    for t in sorted(trials, key=lambda t: t.number):
        seg = t.user_attrs.get("pbt")
        if seg is not None:
            latest[(seg["member"], seg["generation"])] = t
    return latest


def queue_segments(study: optuna.Study, spec: str, search: SearchConfig, prepared: Prepared,
                   starts: Sequence[Mapping[str, Any]] = ()) -> int:
    """Queue what is due, under the storage's lock: the first generation's segments, then each next generation once
    every member has ended the one before; each missing segment once. The segments queued."""
    ends = boundaries(prepared.base.train.epochs, search.interval)
    entries = list(prepared.space.entries)
    queued = 0
    with decision_lock(study, spec):
        trials = study.get_trials(deepcopy=False)
        latest = latest_segments(trials)
        for m in range(search.population):
            if (m, 0) not in latest:
                settings = first_settings(m, search, entries, starts)
                _enqueue(study, {"member": m, "generation": 0, "start": 0, "end": ends[0], "source": None,
                                 "copied_from": None, "changed": {}}, settings, dict(settings))
                queued += 1
        for g in range(1, len(ends)):
            if all((m, g) in latest and latest[(m, g)].state not in PENDING for m in range(search.population)):
                _remove_segment_folders(trials, spec, g - 1)  # every member has left it: its checkpoints are spent
        for g in range(len(ends) - 1):
            gen = [latest.get((m, g)) for m in range(search.population)]
            if any(t is None or t.state in PENDING for t in gen):
                break
            missing = [m for m in range(search.population) if (m, g + 1) not in latest]
            if not missing:
                continue
            ended = [latest[(m, g)] for m in range(search.population)]
            members = [Member(m, _value_at(t, ends[g]), settings_of(t.user_attrs["overrides"]))
                       for m, t in enumerate(ended)]
            for step in decide(members, entries, quantile=search.quantile,
                               resample_probability=search.resample_probability, perturb=search.perturb,
                               maximize=study.direction == optuna.study.StudyDirection.MAXIMIZE,
                               seed=[search.seed, g + 1]):
                if step.member in missing:
                    _enqueue_next(study, step, ended, g + 1, ends)
                    queued += 1
            break  # a generation queued now has not run yet
    return queued


def _remove_segment_folders(trials: Sequence[FrozenTrial], spec: str, generation: int) -> None:
    """Remove the run folders of a generation's paused segments (config.toml and the checkpoint that the next
    generation went on from), so that a search leaves whole runs only: its members' last segments."""
    for t in trials:
        seg = t.user_attrs.get("pbt")
        if t.state != TrialState.PRUNED or seg is None or seg["generation"] != generation:
            continue
        folder = run_folder(t.user_attrs, folder_of(spec))
        if folder is not None and (Path(folder) / CHECKPOINT).is_dir() and not (Path(folder) / "metrics.json").exists():
            shutil.rmtree(folder, ignore_errors=True)


def first_settings(member: int, search: SearchConfig, entries: Sequence[Entry],
                   starts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A member's first settings: a warm start (search.enqueue, in order: study.warm checked it, a point of the space
    with every key), else drawn from the space, seeded by the search's seed and the member."""
    if member < len(starts):
        return {e.path: starts[member][e.path] for e in entries}
    rng = np.random.default_rng([search.seed, 0, member])
    return {e.path: draw(e, rng) for e in entries}


def _enqueue_next(study: optuna.Study, step: Next, gen: Sequence[FrozenTrial], generation: int,
                  ends: Sequence[int]) -> None:
    source = gen[step.source]
    start = ends[generation - 1]
    overrides = dict(source.user_attrs["overrides"])
    if step.exploited:  # the donor's experiment, then the explored settings from the next epoch on
        overrides["train.changes"] = [*overrides.get("train.changes", []), {"epoch": start + 1, **step.settings}]
    seg = {"member": step.member, "generation": generation, "start": start, "end": ends[generation],
           "source": source.number, "copied_from": step.source if step.exploited else None, "changed": step.changed}
    _enqueue(study, seg, step.settings, overrides)


def _enqueue(study: optuna.Study, seg: dict[str, Any], settings: Mapping[str, Any],
             overrides: Mapping[str, Any]) -> None:
    study.enqueue_trial({path: encode(value) for path, value in settings.items()},
                        user_attrs={"pbt": seg, "overrides": dict(overrides)}, skip_if_exists=False)


def _value_at(t: FrozenTrial, epoch: int) -> float | None:
    """A segment's value at its generation's end; None for one that diverged or failed (it has no state there)."""
    if t.state not in (TrialState.COMPLETE, TrialState.PRUNED) or t.user_attrs.get("status") == "diverged":
        return None
    value = t.intermediate_values.get(epoch)
    return value if value is not None and math.isfinite(value) else None


def settings_of(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The space's settings that a segment's experiment (its `overrides`) trains with at its end: its last change's,
    else its first settings."""
    overrides = dict(overrides)
    changes = overrides.pop("train.changes", [])
    return {**overrides, **({k: v for k, v in changes[-1].items() if k != "epoch"} if changes else {})}


@contextlib.contextmanager
def decision_lock(study: optuna.Study, spec: str) -> Iterator[None]:
    """One process at a time queues the next generation: a file lock beside a SQLite or journal file, PostgreSQL's
    advisory lock on the server (each ends with its process, however it ends)."""
    file = storage_file(spec)
    if file is not None:
        with open(f"{file}.pbt-lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    backend = rdb_backend(storage_of(study))
    if backend is None or backend.engine.dialect.name != "postgresql":
        raise ConfigError("search.pruner pbt: runs on SQLite, a journal file or PostgreSQL, whose locks keep two "
                          "workers from queuing one generation twice")
    from sqlalchemy import text

    key = int.from_bytes(hashlib.sha256(f"dltune-pbt:{study.study_name}".encode()).digest()[:8], "big", signed=True)
    with backend.engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            connection.commit()


def work_pbt(study: optuna.Study, spec: str, study_name: str, config: ExperimentConfig, prepared: Prepared,
             out: Path, timeout: float | None, should_stop: Callable[[], bool] | None, on_trial: OnTrial | None,
             starts: Sequence[Mapping[str, Any]] = ()) -> int:
    """Run the PBT search's segments until every member has trained train.epochs (or `timeout` seconds pass); the
    segments run here."""
    heart = Heartbeat(study)
    objective = segment_objective(prepared, out, should_stop, study_name)
    target = pbt_target(config)
    deadline = None if timeout is None else time.monotonic() + timeout
    ran = failed_in_a_row = 0
    swept: set[int] = set()
    try:
        while True:
            if should_stop is not None and should_stop():
                raise KeyboardInterrupt
            if failed_in_a_row >= MAX_FAILURES_IN_A_ROW:
                raise FailingSearch(f"the search stopped: {failed_in_a_row} segments in a row failed here")
            if heart.on:
                optuna.storages.fail_stale_trials(study)  # a dead worker's segment: failed and queued again
            queue_segments(study, spec, config.search, prepared, starts)
            trials = study.get_trials(deepcopy=False)
            sweep_abandoned(trials, swept)
            _sweep_unrecorded(trials, out)
            if pbt_done(trials) >= target or (deadline is not None and time.monotonic() >= deadline):
                return ran
            if not any(t.state == TrialState.WAITING for t in trials):
                if not heart.on and not any(t.state == TrialState.RUNNING for t in trials):
                    return ran  # nothing can come (a journal file: a killed run's segment is queued on the next run)
                if heart.on:
                    adopt_orphans(study, trials)
                time.sleep(1.0)
                continue
            trial = take_waiting(study)
            if trial is None:  # another worker took the last one meanwhile
                continue
            if "pbt" not in trial.user_attrs:  # not a segment (queued by hand): nothing PBT can run
                trial.set_user_attr("error", "not a segment of the PBT search (queued from outside it)")
                study.tell(trial, state=TrialState.FAIL)
                continue
            heart.add(trial.number)
            try:
                run_and_tell(study, trial, objective)
            finally:
                heart.discard(trial.number)
            ran += 1
            release_freed_memory()
            last = record(stored_trial(study, trial.number))
            failed_in_a_row = failed_in_a_row + 1 if last.state == "FAIL" else 0
            if on_trial is not None:
                on_trial(last)
    finally:
        heart.close()


def _sweep_unrecorded(trials: Sequence[FrozenTrial], out: Path) -> None:
    """Remove the empty run folder of a segment killed between claiming it and recording it (sweep_abandoned finds a
    killed trial's folder by its record)."""
    for t in trials:
        folder = out / "trials" / f"trial-{t.number}"
        if t.state == TrialState.FAIL and "run_dir" not in t.user_attrs and folder.is_dir() and not any(
                folder.iterdir()):
            folder.rmdir()


def segment_objective(prepared: Prepared, out: Path, should_stop: Callable[[], bool] | None,
                      study_name: str) -> Objective:
    """The objective of a segment: its run folder (trials/trial-N) holds the checkpoint it goes on from, copied
    from its source segment's; it trains to its generation's end and pauses there (told PRUNED, its value reported
    at each epoch), or, the last generation, to the run's end (told its objective's value)."""
    per_epoch = per_epoch_objective(prepared.objectives)
    assert per_epoch is not None  # prepare refuses a pruner on an objective with no value per epoch
    epochs = prepared.base.train.epochs

    def objective(trial: optuna.Trial, resume: bool = False) -> float:  # a segment is never resumed: it re-runs
        seg, overrides = trial.user_attrs["pbt"], trial.user_attrs["overrides"]
        prepared.space.sample(trial)  # the settings queued with it (fixed), recorded as its parameters
        config = override(prepared.base, overrides)
        run_dir = claim_dir(out / "trials" / f"trial-{trial.number}")
        store_run_dir(trial, run_dir, out)
        if seg["source"] is not None:
            _copy_state(trial.study, seg["source"], run_dir, config, out)

        def on_epoch(epoch: int, epoch_record: Mapping[str, Any]) -> str | None:
            if should_stop is not None and should_stop():
                raise KeyboardInterrupt
            value = lookup(epoch_record, per_epoch)
            if epoch <= seg["start"] or value is None or not math.isfinite(value):
                return None
            trial.report(value, epoch)
            return "pause" if epoch == seg["end"] and epoch < epochs else None

        data = trial_data(prepared, config)
        try:
            result = train(config, on_epoch=on_epoch, out_dir=run_dir, data=handed_to_train(config, data),
                           model=prepared.model, track=trial_track(study_name, trial.number, out),
                           resume=seg["source"] is not None)
        except Paused:
            raise optuna.TrialPruned(f"generation {seg['generation']} ended after epoch {seg['end']}") from None
        store_run(trial, result.record(), out)
        if result.status == "diverged":
            raise optuna.TrialPruned(f"diverged: {result.divergence.describe() if result.divergence else ''}")
        values, _ = objective_values(result, prepared.objectives, run_dir, data)
        return values[0]

    return objective


def _copy_state(study: optuna.Study, source: int, run_dir: Path, config: ExperimentConfig, out: Path) -> None:
    """The source segment's checkpoint into `run_dir`, with this segment's experiment beside it, so that train
    goes on from there (resume)."""
    attrs = stored_trial(study, source).user_attrs
    folder = run_folder(attrs, out)
    if folder is None or not has_checkpoint(folder):
        raise ConfigError(f"trial {source}'s checkpoint, which this segment goes on from, is not at {folder}: PBT's "
                          "members copy each other's state, so workers on several machines need the output folder "
                          "on a filesystem they share")
    target = run_dir / CHECKPOINT
    target.mkdir(exist_ok=True)
    state = Path(folder) / CHECKPOINT / STATE
    tensors = json.loads(state.read_text(encoding="utf-8"))["tensors"]
    shutil.copyfile(Path(folder) / CHECKPOINT / tensors, target / tensors)
    shutil.copyfile(state, target / STATE)
    write_text(run_dir / "config.toml", to_toml(config))
    logging.getLogger("dltune").debug("segment in %s goes on from trial %d's checkpoint", run_dir, source)
