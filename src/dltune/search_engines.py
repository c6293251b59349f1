"""Optuna's parts by name and storages by URL: the samplers and pruners a search can name, and storages
opened with heartbeats, with any failure to reach them turned into a clear error (password masked)."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend

from dltune.config import SearchConfig
from dltune.errors import ConfigError, DltuneError, mask_password
from dltune.registry import Registry
from dltune.space import SearchSpace

__all__ = ["PRUNERS", "SAMPLERS", "Heartbeat", "connect", "guard", "storage_for"]

SAMPLERS: Registry[Callable[[SearchConfig, SearchSpace], optuna.samplers.BaseSampler]] = Registry("sampler")
SAMPLERS.register("tpe", lambda c, s: optuna.samplers.TPESampler(seed=c.seed, multivariate=True, group=True,
                                                                 constant_liar=True))
SAMPLERS.register("random", lambda c, s: optuna.samplers.RandomSampler(seed=c.seed))
SAMPLERS.register("grid", lambda c, s: optuna.samplers.GridSampler(s.grid(), seed=c.seed))
SAMPLERS.register("cmaes", lambda c, s: optuna.samplers.CmaEsSampler(seed=c.seed, warn_independent_sampling=False))
SAMPLERS.register("gp", lambda c, s: optuna.samplers.GPSampler(seed=c.seed, warn_independent_sampling=False))
SAMPLERS.register("qmc", lambda c, s: optuna.samplers.QMCSampler(seed=c.seed, warn_independent_sampling=False))
SAMPLERS.register("nsga2", lambda c, s: optuna.samplers.NSGAIISampler(seed=c.seed))

PRUNERS: Registry[Callable[[SearchConfig, int], optuna.pruners.BasePruner]] = Registry("pruner")
PRUNERS.register("none", lambda c, epochs: optuna.pruners.NopPruner())
PRUNERS.register("median", lambda c, epochs: optuna.pruners.MedianPruner(
    n_startup_trials=c.startup_trials, n_warmup_steps=c.min_epochs))
PRUNERS.register("percentile", lambda c, epochs: optuna.pruners.PercentilePruner(
    c.percentile, n_startup_trials=c.startup_trials, n_warmup_steps=c.min_epochs))
# asha: trials pause at a rung until promoted (dltune.asha.Ladder, run by the search loop), so Optuna prunes nothing;
# optuna-asha: Optuna's successive halving, which decides once, when a trial reaches a rung
PRUNERS.register("asha", lambda c, epochs: optuna.pruners.NopPruner())
PRUNERS.register("optuna-asha", lambda c, epochs: optuna.pruners.SuccessiveHalvingPruner(
    min_resource=c.min_epochs, reduction_factor=c.reduction_factor))
PRUNERS.register("hyperband", lambda c, epochs: optuna.pruners.HyperbandPruner(
    min_resource=c.min_epochs, max_resource=epochs, reduction_factor=c.reduction_factor))


def connect(spec: str) -> optuna.storages.BaseStorage:
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # dltune prints its own line per trial, errors included
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # trials run by ask and tell, with dltune's own Heartbeat beating for them
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    return guard(spec, lambda: storage_for(spec))


def guard(spec: str, fn: Callable[[], Any]) -> Any:
    """Run `fn`; a storage that cannot be reached becomes a clear error, its password masked."""
    try:
        return fn()
    except DltuneError:
        raise
    except Exception as e:  # connection errors, a bad URL, a missing driver
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"--storage {mask_password(spec)}: cannot open the storage: {mask_password(reason)}") from None


def storage_for(spec: str, heartbeat: bool = True) -> optuna.storages.BaseStorage:
    if spec.startswith("journal:"):
        return JournalStorage(JournalFileBackend(spec.removeprefix("journal:")))
    # SQLite: threads of one process (a heartbeat, paused trials) wait up to 60 s for the file's lock
    engine = {"pool_pre_ping": True, **({"connect_args": {"timeout": 60}} if spec.startswith("sqlite") else {})}
    if not heartbeat:
        return RDBStorage(spec, engine_kwargs=engine)
    # Heartbeats: a trial whose process dies stops beating; after the grace period the next worker to
    # start a trial fails it and queues its parameters again (Optuna's RetryHeartbeatStaleTrialCallback).
    return RDBStorage(spec, heartbeat_interval=1, grace_period=5,
                      heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
                      engine_kwargs=engine)


class Heartbeat:
    """One thread that beats for every trial this process holds, running or paused at a rung.

    Optuna's optimize() beats for its one trial; a trial paused by dltune's ASHA must beat too, or
    another worker would take it for dead. A failed beat (a locked SQLite file) is tried again at the
    next interval instead of ending the thread.
    """

    def __init__(self, storage: optuna.storages.BaseStorage) -> None:
        self._storage = storage if isinstance(storage, optuna.storages._heartbeat.BaseHeartbeat) else None
        self._trials: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, trial_id: int) -> None:
        if self._storage is None:
            return
        self._storage.record_heartbeat(trial_id)
        with self._lock:
            self._trials.add(trial_id)
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self._trials.discard(trial_id)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _beat(self) -> None:
        assert self._storage is not None
        interval = self._storage.get_heartbeat_interval() or 1
        while not self._stop.wait(interval):
            with self._lock:
                trials = list(self._trials)
            for trial_id in trials:
                try:
                    self._storage.record_heartbeat(trial_id)
                except Exception:  # noqa: BLE001 - beat again at the next interval
                    pass
