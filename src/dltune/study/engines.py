"""Optuna's parts by name and storages by URL: the samplers and pruners a search can name, and storages
opened with heartbeats, with any failure to reach them turned into a clear error (password masked)."""

from __future__ import annotations

import functools
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from dltune.errors import ConfigError, DltuneError, mask_password
from dltune.experiment.sections import SearchConfig
from dltune.imports import need_extra
from dltune.registry import Registry
from dltune.study.optuna_adapter import rdb_backend, reseed_sampler, storage_of, trial_id, trial_numbered_qmc
from dltune.study.retry import PatientStorage, patience
from dltune.study.space import SearchSpace

__all__ = ["PRUNERS", "SAMPLERS", "Heartbeat", "PrunerSpec", "connect", "create_sqlite_file", "folder_of", "guard",
           "libpq_timeouts", "quiet", "require_driver", "sampler_for", "storage_file", "storage_for",
           "stored_studies"]

SAMPLERS: Registry[Callable[[SearchConfig, SearchSpace], optuna.samplers.BaseSampler]] = Registry("sampler")
SAMPLERS.register("tpe", lambda c, s: optuna.samplers.TPESampler(seed=c.seed, multivariate=True, group=True,
                                                                 constant_liar=True))
SAMPLERS.register("random", lambda c, s: optuna.samplers.RandomSampler(seed=c.seed))
SAMPLERS.register("grid", lambda c, s: optuna.samplers.GridSampler(s.grid(), seed=c.seed))
SAMPLERS.register("cmaes", lambda c, s: optuna.samplers.CmaEsSampler(seed=c.seed, warn_independent_sampling=False))
SAMPLERS.register("gp", lambda c, s: optuna.samplers.GPSampler(seed=c.seed, warn_independent_sampling=False))
SAMPLERS.register("qmc", lambda c, s: trial_numbered_qmc(c.seed))  # a trial's number picks its point
SAMPLERS.register("nsga2", lambda c, s: optuna.samplers.NSGAIISampler(seed=c.seed))


@dataclass(frozen=True)
class PrunerSpec:
    """A registered pruner: a factory of Optuna's pruner (config, train.epochs), and whether trials pause at rungs
    (dltune's ASHA: the search loop pauses and promotes them, and Optuna's pruner then prunes nothing)."""

    make: Callable[[SearchConfig, int], optuna.pruners.BasePruner]
    pauses: bool = False
    population: bool = False  # pbt: the search is a population of runs (study.pbt_search), not sampled trials


PRUNERS: Registry[PrunerSpec] = Registry("pruner")
PRUNERS.register("none", PrunerSpec(lambda c, epochs: optuna.pruners.NopPruner()))
PRUNERS.register("median", PrunerSpec(lambda c, epochs: optuna.pruners.MedianPruner(
    n_startup_trials=c.startup_trials, n_warmup_steps=c.min_epochs)))
PRUNERS.register("percentile", PrunerSpec(lambda c, epochs: optuna.pruners.PercentilePruner(
    c.percentile, n_startup_trials=c.startup_trials, n_warmup_steps=c.min_epochs)))
# asha: trials pause at a rung until promoted (dltune.study.asha, run by the search loop);
# optuna-asha: Optuna's successive halving, which decides once, when a trial reaches a rung
PRUNERS.register("asha", PrunerSpec(lambda c, epochs: optuna.pruners.NopPruner(), pauses=True))
# pbt: population-based training (study.pbt), which changes settings during training; no trial is pruned
PRUNERS.register("pbt", PrunerSpec(lambda c, epochs: optuna.pruners.NopPruner(), population=True))
PRUNERS.register("optuna-asha", PrunerSpec(lambda c, epochs: optuna.pruners.SuccessiveHalvingPruner(
    min_resource=c.min_epochs, reduction_factor=c.reduction_factor)))
PRUNERS.register("hyperband", PrunerSpec(lambda c, epochs: optuna.pruners.HyperbandPruner(
    min_resource=c.min_epochs, max_resource=epochs, reduction_factor=c.reduction_factor)))


def sampler_for(search: SearchConfig, space: SearchSpace) -> optuna.samplers.BaseSampler:
    """The search's sampler, its random state reseeded for each trial from (search.seed, trial number).

    Seeding every process's sampler with search.seed makes a second worker, or a process that resumes a
    search, draw the first process's points again (its random start-up replays the same stream). Optuna's
    own answer for parallel workers, `optimize(n_jobs=...)`, reseeds each from fresh entropy, which gives
    up reproducibility (optuna#1547 asks for unique points across workers). The study gives every trial a
    number no other trial has, so a stream seeded by it is new in every trial, on every worker; and the
    same seed still gives the same search in one process, and after a resume, trial by trial.
    """
    with quiet():
        sampler = SAMPLERS.get(search.sampler)(search, space)
    before_trial = sampler.before_trial

    def reseeded_before_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        reseed_sampler(sampler, np.random.SeedSequence([search.seed, trial.number]))
        before_trial(study, trial)

    # Optuna calls it as each trial starts, before any sampling
    sampler.before_trial = reseeded_before_trial  # type: ignore[method-assign]
    return sampler


@contextmanager
def quiet() -> Iterator[None]:
    """Optuna's warnings that say nothing to a dltune user, silenced for the block only (the caller's own filters
    are back afterwards): the experimental features dltune chose (TPE's groups, QMC, heartbeats, stale-trial
    retries), and the note that heartbeats are meant for optimize(): dltune asks and tells, and beats for its
    trials itself (Heartbeat)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        yield


def storage_file(spec: str) -> Path | None:
    """The file of a SQLite or journal storage (sqlite:///FOLDER/study.db, journal:FOLDER/journal.log); None for a
    database server."""
    for prefix in ("sqlite:///", "journal:"):
        if spec.startswith(prefix):
            return Path(spec.removeprefix(prefix))
    return None


def folder_of(spec: str) -> Path | None:
    """The folder of a storage file: a study's output folder, which its trials' run folders are recorded against
    (records.run_folder); None for a database server."""
    file = storage_file(spec)
    return None if file is None else file.parent


def connect(spec: str) -> optuna.storages.BaseStorage:
    with quiet():
        return guard(spec, lambda: storage_for(spec))


def stored_studies(spec: str, storage: str | optuna.storages.BaseStorage) -> dict[str, dict[str, Any]]:
    """The studies in a storage by name, each with its user attributes, in one read of the studies' tables
    (a storage that cannot be reached: a clear error). Not Optuna's get_all_study_summaries, which reads every
    trial of every study: slow on a server that many searches share, and a KeyError ("Record does not exist.")
    when another process deletes a study meanwhile, which failed a worker that only opened its own study."""
    return guard(spec, lambda: {s.study_name: s.user_attrs
                                for s in optuna.storages.get_storage(storage).get_all_studies()})


def require_driver(spec: str) -> None:
    """A PostgreSQL URL's driver, psycopg (dltune's postgres extra; SQLAlchemy's default for postgresql://), or an
    error that says how to install it. A URL that names another driver (postgresql+psycopg2://) needs that one."""
    if spec.partition("://")[0] in ("postgresql", "postgresql+psycopg"):
        need_extra("postgres", "psycopg", who=f"--storage {mask_password(spec)}: PostgreSQL's driver, psycopg,")


def guard(spec: str, fn: Callable[[], Any]) -> Any:
    """Run `fn`; a storage that cannot be reached becomes a clear error, its password masked."""
    require_driver(spec)
    try:
        return fn()
    except DltuneError:
        raise
    except Exception as e:  # connection errors, a bad URL, a missing driver
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"--storage {mask_password(spec)}: cannot open the storage: "
                          f"{mask_password(reason)}") from None


def storage_for(spec: str, heartbeat: bool = True) -> optuna.storages.BaseStorage:
    if spec.startswith("journal:"):
        path = spec.removeprefix("journal:")
        lock = JournalFileSymlinkLock(path)  # the lock Optuna's backend takes by default, held here as well
        backend = JournalFileBackend(path, lock_obj=lock)
        _drop_torn_record(path, lock)
        journal = JournalStorage(backend)
        journal.get_all_studies()  # the whole file read now: a damaged record is an error here, naming the file
        return journal
    create_sqlite_file(spec)
    # SQLite: threads of one process (a heartbeat, paused trials) wait up to 60 s for the file's lock
    opened: Callable[..., RDBStorage] = RDBStorage
    connect_args: dict[str, int] = {"timeout": 60}
    if not spec.startswith("sqlite"):
        # a database server (PostgreSQL, MySQL) may go away and come back: its calls are tried again meanwhile
        waited = patience()
        connect_args = libpq_timeouts(spec, waited)
        opened = functools.partial(PatientStorage, patience=waited)
    engine = {"pool_pre_ping": True, **({"connect_args": connect_args} if connect_args else {})}
    if not heartbeat:
        return opened(spec, engine_kwargs=engine)
    # Heartbeats: a trial whose process dies stops beating; after the grace period the next worker to
    # start a trial fails it and queues its parameters again (Optuna's RetryHeartbeatStaleTrialCallback).
    return opened(spec, heartbeat_interval=1, grace_period=5,
                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3), engine_kwargs=engine)


def libpq_timeouts(spec: str, patience: float) -> dict[str, int]:
    """libpq's own limits for a PostgreSQL URL (psycopg, psycopg2), where the URL does not set them itself.

    Without them a server that accepts a connection and never answers (a hung host, a failover to a machine that
    is not up yet) holds the connect forever, and so the worker, whose patience (retry.PatientStorage) counts only
    between tries: `connect_timeout` ends a connect after min(10 s, the patience), at least 2 s (libpq's
    least). TCP keepalives (idle 30 s, then 3 probes 10 s apart) end a connection whose peer vanished while a
    query waited for its answer; a loopback test cannot cut a peer that way, so they are set, not exercised."""
    from sqlalchemy.engine import make_url

    url = make_url(spec)
    if url.get_backend_name() != "postgresql" or url.get_driver_name() not in ("psycopg", "psycopg2"):
        return {}
    limits = {"connect_timeout": max(2, min(10, math.ceil(patience))), "keepalives": 1, "keepalives_idle": 30,
              "keepalives_interval": 10, "keepalives_count": 3}
    return {key: value for key, value in limits.items() if key not in url.query}


def create_sqlite_file(spec: str) -> None:
    """Create a SQLite storage's file, empty (which SQLite takes for an empty database), when it does not exist yet,
    as `open` creates files: with the mode the user's umask leaves. SQLite itself creates it 0o644 less the umask,
    so a group that a umask of 002 means to share a search with could not write to it. Its journal files take the
    database file's mode."""
    if not spec.startswith("sqlite:///"):
        return
    from sqlalchemy.engine import make_url

    database = make_url(spec).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    try:
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666))  # an existing file is left as is
    except OSError:
        pass  # a folder that does not exist, a read-only one: SQLite's own error says so


def _drop_torn_record(path: str, lock: JournalFileSymlinkLock) -> None:
    """Cut a last record that a killed process left half written (no newline). Optuna skips it when reading, but
    appends the next record to the same line, which then cannot be read, nor can anything after it. Under the
    journal's lock (the one its backend takes), so that no other process's append is in flight."""
    lock.acquire()
    try:
        with open(path, "rb+") as f:
            if f.seek(0, os.SEEK_END) and f.seek(-1, os.SEEK_END) >= 0 and f.read(1) != b"\n":
                f.seek(0)
                f.truncate(f.read().rfind(b"\n") + 1)
    finally:
        lock.release()


class Heartbeat:
    """One thread that beats for every trial this process holds, running or paused at a rung.

    Optuna's optimize() beats for its one trial; a trial paused by dltune's ASHA must beat too, or
    another worker would take it for dead. A failed beat (a locked SQLite file) is tried again at the
    next interval instead of ending the thread. Trials are named by number; `on` is False for a storage
    without heartbeats (a journal file), where every call does nothing.
    """

    def __init__(self, study: optuna.Study) -> None:
        backend = rdb_backend(storage_of(study))  # Optuna's storages that beat: RDBStorage alone
        self._study = study
        self._database = backend if backend is not None and backend.heartbeat_interval is not None else None
        self._trials: dict[int, int] = {}  # the trials it beats for: number -> the id that record_heartbeat takes
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def on(self) -> bool:
        return self._database is not None

    def add(self, number: int) -> None:
        if self._database is None:
            return
        with self._lock:
            known = self._trials.get(number)
        stored_id = known if known is not None else trial_id(self._study, number)
        self._database.record_heartbeat(stored_id)
        with self._lock:
            self._trials[number] = stored_id
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()

    def discard(self, number: int) -> None:
        with self._lock:
            self._trials.pop(number, None)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _beat(self) -> None:
        assert self._database is not None
        interval = self._database.get_heartbeat_interval() or 1
        while not self._stop.wait(interval):
            with self._lock:
                trials = list(self._trials.values())
            for stored_id in trials:
                try:
                    self._database.record_heartbeat(stored_id)
                except Exception:  # noqa: BLE001 - beat again at the next interval
                    pass
