"""Optuna's private API, in one place: the few things dltune needs that Optuna keeps to itself.

Every name here that begins with `_` in Optuna, or state that Optuna keeps inside its objects, may change in a minor
release without notice (Optuna's semver covers its public API only). So no other module of dltune names them (a test
scans the package), each function says which Optuna release it was read from and why no public API does its job,
and tests/test_optuna_adapter.py runs every function against the installed Optuna on real storages: an upgrade that
breaks one fails there first, not hours into a search. What Optuna offers publicly is used publicly elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import optuna
from optuna.storages import BaseStorage, RDBStorage

__all__ = ["READ_FROM", "RDB_PRIVATE_METHODS", "beating_trial_ids", "rdb_backend", "reseed_sampler", "storage_of",
           "take_waiting", "trial_id", "trial_ids", "trial_numbered_qmc"]

READ_FROM = "5.0.0"  # the Optuna release every function below was read from (constraints.txt pins it)

# Read from Optuna 5.0.0. RDBStorage's private methods that Optuna itself calls: _CachedStorage (which wraps every
# RDBStorage a study opens) calls the first four in place of the public ones, and fail_stale_trials calls the last.
# A subclass that tries calls again while the database is away (retry.PatientStorage) must wrap them too; no public
# method sits between them and the database.
RDB_PRIVATE_METHODS = ("_create_new_trial", "_set_trial_param", "_get_trials", "_get_best_trial_id",
                       "_get_stale_trial_ids")


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage that `study` reads and writes: for a database, Optuna's cache around the RDBStorage given."""
    # Read from Optuna 5.0.0: Study._storage. Study has no public accessor of its storage (Optuna's own public
    # fail_stale_trials reads this attribute); dltune needs it to put a taken trial back in the queue
    # (sharing.claim_trial) and to beat for trials that Study.optimize does not run (engines.Heartbeat).
    return study._storage


def trial_ids(study: optuna.Study, numbers: Iterable[int]) -> dict[int, int]:
    """The storage's id of each trial number of `study` (number -> id), which the storage's methods take."""
    # Read from Optuna 5.0.0. Public route: BaseStorage.get_study_id_from_name and
    # get_trial_id_from_study_id_trial_number, in place of Trial._trial_id and FrozenTrial._trial_id (Study._study_id
    # likewise); only the storage itself comes from storage_of. Optuna's cache answers the second from memory.
    storage = storage_of(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    return {number: storage.get_trial_id_from_study_id_trial_number(study_id, number) for number in numbers}


def trial_id(study: optuna.Study, number: int) -> int:
    """The storage's id of trial `number` of `study`."""
    return trial_ids(study, [number])[number]  # read from Optuna 5.0.0: see trial_ids


def rdb_backend(storage: BaseStorage) -> RDBStorage | None:
    """The RDBStorage behind `storage` (itself, or the one Optuna's cache wraps); None for any other storage."""
    # Read from Optuna 5.0.0: optuna.storages._CachedStorage._backend. create_study and load_study wrap an
    # RDBStorage in _CachedStorage (optuna.storages.get_storage), which has no public accessor of what it wraps;
    # heartbeats are kept by the RDBStorage alone, and dltune reads its table of them (beating_trial_ids).
    if isinstance(storage, RDBStorage):
        return storage
    backend = getattr(storage, "_backend", None)
    return backend if isinstance(backend, RDBStorage) else None


def beating_trial_ids(storage: RDBStorage, ids: Iterable[int]) -> set[int]:
    """The trials among `ids` that have a heartbeat recorded (one read of the database)."""
    # Read from Optuna 5.0.0: optuna.storages._rdb.models.TrialHeartbeatModel, the table of heartbeats. No public API
    # says whether a trial ever beat: fail_stale_trials (through RDBStorage._get_stale_trial_ids) fails only trials
    # whose last beat is old, and skips a trial that never beat, the case sharing.adopt_orphans looks for. The read
    # goes through the storage's public SQLAlchemy engine, not Optuna's private session helper.
    import sqlalchemy
    from optuna.storages._rdb.models import TrialHeartbeatModel

    wanted = list(ids)
    if not wanted:
        return set()
    query = sqlalchemy.select(TrialHeartbeatModel.trial_id).where(TrialHeartbeatModel.trial_id.in_(wanted))
    with storage.engine.connect() as connection:
        return set(connection.execute(query).scalars())


def reseed_sampler(sampler: optuna.samplers.BaseSampler, seeds: np.random.SeedSequence) -> int:
    """Seed every random state of `sampler` and of the samplers it holds (TPE's random start-up sampler, CMA-ES's
    independent one, ...) from `seeds`, in a fixed order; how many random states it seeded."""
    # Read from Optuna 5.0.0: samplers keep their streams in attributes of the private class
    # optuna.samplers._lazy_random_state.LazyRandomState (TPE's _rng, its _random_sampler's _rng, ...), found here
    # by walking the sampler's own attributes. No public API seeds a sampler after it is made: reseed_rng() draws
    # fresh entropy, which gives up the reproducibility that engines.sampler_for is for.
    from optuna.samplers._lazy_random_state import LazyRandomState

    seeded = 0
    for _, value in sorted(vars(sampler).items()):
        if isinstance(value, LazyRandomState):
            value.rng.seed(seeds.spawn(1)[0].generate_state(1)[0])  # as a new RandomState(seed) would start
            seeded += 1
        elif isinstance(value, optuna.samplers.BaseSampler):
            seeded += reseed_sampler(value, seeds.spawn(1)[0])
    return seeded


class _TrialQMCSampler(optuna.samplers.QMCSampler):
    """QMC whose point for a trial is the trial's number in the sequence (see trial_numbered_qmc)."""

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                        search_space: dict[str, Any]) -> dict[str, Any]:
        self._trial_number = trial.number  # trials of one process sample one at a time
        return super().sample_relative(study, trial, search_space)

    # Read from Optuna 5.0.0: QMCSampler._find_sample_id(study, search_space) -> int, the index of the next point in
    # the sequence, which Optuna counts in a study attribute; no public parameter or hook chooses the index.
    def _find_sample_id(self, study: optuna.Study, search_space: dict[str, Any]) -> int:
        return self._trial_number


def trial_numbered_qmc(seed: int | None) -> optuna.samplers.QMCSampler:
    """Optuna's QMCSampler, with a trial's number as its point's index in the sequence. Optuna counts the points in
    a study attribute that two workers can read at once (its own TODO: "not atomic"), and then both draw the same
    point; a trial's number is unique. Its seed (the scrambling) must be the same in every process."""
    return _TrialQMCSampler(seed=seed, warn_independent_sampling=False)


def take_waiting(study: optuna.Study) -> optuna.Trial | None:
    """A WAITING trial of the queue, now RUNNING and this process's alone; None when the queue is empty.

    Read from Optuna 5.0.0: Study.ask() takes the first waiting trial that its private _pop_waiting_trial_id can set
    RUNNING (the storage refuses the change when another process took the trial first), and creates a new trial when
    none is left. A PBT search (study.pbt_search) runs queued segments only: a new trial there would be no member's, so
    it needs ask()'s first half without the second, which no public API offers."""
    taken = study._pop_waiting_trial_id()
    return None if taken is None else optuna.Trial(study, taken)
