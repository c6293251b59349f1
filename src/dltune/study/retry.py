"""A database storage that rides out a lost connection: each call is tried again, waiting longer each time, until the
database answers or the patience runs out; then a clear error names the URL (its password masked) and the last error.

A search on PostgreSQL runs for hours on workers that share one server; a restart of the server, a failover or a
network blip must not end them, nor leave their trials half told. Optuna's RDBStorage tries nothing again but its
own deadlocks, and SQLAlchemy's pool_pre_ping only replaces connections that died while idle in the pool.
"""

from __future__ import annotations

import functools
import math
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from optuna.storages import RDBStorage
from optuna.trial import TrialState

from dltune.errors import ConfigError, DltuneError, mask_password
from dltune.study.optuna_adapter import RDB_PRIVATE_METHODS

__all__ = ["PATIENCE", "PATIENCE_ENV", "PatientStorage", "backoff", "lost_connection", "patience"]

T = TypeVar("T")

PATIENCE = 60.0  # seconds a worker waits for a lost database to come back before it stops
PATIENCE_ENV = "DLTUNE_STORAGE_PATIENCE"  # seconds, instead of PATIENCE (tests: a few)
FIRST_WAIT, LONGEST_WAIT = 0.5, 8.0  # seconds between tries: doubling from the first to the longest


def patience() -> float:
    """Seconds to wait for a lost database: $DLTUNE_STORAGE_PATIENCE, or PATIENCE."""
    text = os.environ.get(PATIENCE_ENV)
    if text is None:
        return PATIENCE
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0.0:
        raise ConfigError(f"${PATIENCE_ENV}: must be a number of seconds >= 0, got {text!r}")
    return value


def backoff(attempt: int) -> float:
    """Seconds to wait before try `attempt` + 2 (0-based): 0.5, 1, 2, 4, 8, 8, ..."""
    return min(LONGEST_WAIT, FIRST_WAIT * 2.0**attempt)


def lost_connection(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from, says that the database could not be reached or the
    connection broke. Optuna raises its StorageInternalError from SQLAlchemy's error, which wraps the driver's;
    the drivers (psycopg, PyMySQL) and SQLAlchemy all name such errors OperationalError or InterfaceError (a
    deadlock, which is worth another try too, is an OperationalError in psycopg)."""
    import sqlalchemy.exc

    if isinstance(error, DltuneError):  # a call that already gave up
        return False
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, ConnectionError) or any(
                kind.__name__ in ("OperationalError", "InterfaceError") for kind in type(current).__mro__):
            return True
        current = current.__cause__ or current.__context__
    return False


class PatientStorage(RDBStorage):
    """An RDBStorage whose calls that reach the database are tried again while the connection is lost, for up to
    `patience` seconds of outage (one clock for all the threads of the process: the search loop, the trial, the
    heartbeat); then they raise a DltuneError naming the URL.

    A subclass, not a wrapper: Optuna puts an RDBStorage in its cache (optuna.storages.get_storage) and fails
    the stale trials of a BaseHeartbeat only (isinstance checks), and study.optuna_adapter reads the RDBStorage's
    engine; a wrapper would be none of these.

    What is tried again, and why that is safe:
    - reads, user and system attributes, parameters, intermediate values, heartbeats: writing the same value twice
      leaves what writing it once does (Optuna upserts them, or ignores the duplicate key);
    - ending a trial (set_trial_state_values): the commit may have been made and only its answer lost; the try
      after that would find the trial finished and raise. A later try reads the trial first: already in the
      state it was to be put in, the call has done its work and succeeds;
    - creating a trial: a commit whose answer was lost leaves a RUNNING trial that no process holds, and a second
      one is created. The first never beats; study.sharing.adopt_orphans fails it and queues its parameters again
      after ORPHAN_SECONDS, as it does for a worker killed before its first heartbeat. Putting it WAITING (a
      popped queued trial whose answer was lost) is the same case.
    - creating a study: the try after a lost answer raises DuplicatedStudyError, which create_study(load_if_exists)
      takes as "load it".
    Opening the storage is not tried again: a URL that does not answer at the start is an error at once.
    """

    def __init__(self, url: str, *, patience: float, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.patience = patience  # seconds
        self._lock = threading.Lock()
        self._down_since: float | None = None  # time.monotonic() of the first failed call since the last success
        self._given_up: str | None = None  # the error, once an outage outlasted the patience: no call is tried again

    def patiently(self, call: Callable[[], T]) -> T:
        """`call()`, tried again while the connection is lost, until the outage has lasted `patience` seconds.
        Once it has, every call fails at once, untried: the process is giving up (a search marks its trials failed
        on the way out), and each try could cost a whole connect timeout against a server that never answers."""
        attempt = 0
        while True:
            with self._lock:
                gone = self._given_up
            if gone is not None:
                raise DltuneError(gone)
            try:
                result = call()
            except Exception as e:
                if not lost_connection(e):
                    raise
                now = time.monotonic()
                with self._lock:
                    self._down_since = now if self._down_since is None else self._down_since
                    left = self._down_since + self.patience - now
                if left <= 0:
                    reason = str(e.__cause__ or e).strip().splitlines()
                    message = (f"--storage {mask_password(self.url)}: lost the connection to the database and it did "
                               f"not come back within {self.patience:g} s (last error: "
                               f"{mask_password(reason[0] if reason else type(e).__name__)})")
                    with self._lock:
                        self._given_up = message
                    raise DltuneError(message) from e
                time.sleep(min(left, backoff(attempt) * random.uniform(0.8, 1.2)))  # workers apart, not in step
                attempt += 1
            else:
                with self._lock:
                    self._down_since = None
                return result

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        tries = 0

        def once() -> bool:
            nonlocal tries
            tries += 1
            if tries > 1 and state.is_finished() and RDBStorage.get_trial(self, trial_id).state == state:
                return True  # the try before was committed; only its answer was lost
            return RDBStorage.set_trial_state_values(self, trial_id, state, values)

        return self.patiently(once)


# every method of RDBStorage that opens a session, tried again as above: the public ones, and the private ones that
# Optuna's cache and fail_stale_trials call in their place (named in study.optuna_adapter)
_RETRIED = ("create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
            "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
            "get_study_system_attrs", "get_all_studies", "get_trial_param", "set_trial_intermediate_value",
            "set_trial_user_attr", "set_trial_system_attr", "get_trial_id_from_study_id_trial_number", "get_trial",
            "record_heartbeat", *RDB_PRIVATE_METHODS)


def _retried(name: str) -> Callable[..., Any]:
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def patient(self: PatientStorage, *args: Any, **kwargs: Any) -> Any:
        return self.patiently(lambda: method(self, *args, **kwargs))

    return patient


for _name in _RETRIED:
    setattr(PatientStorage, _name, _retried(_name))
