"""A persistent pool of worker processes for a study's runs: started once per command, each worker imports torch
once and loads each distinct dataset once, so that a run in a worker costs its training and little else: a run
of the reference experiment trains in under a second, as long as a fresh process takes to import torch.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from types import TracebackType
from typing import Any

from dltune.experiment.config import ExperimentConfig
from dltune.run.assembly import Data, Model, Splits, splits_for

__all__ = ["DataCache", "Pool", "Worker"]


class DataCache:
    """The splits of each distinct [data] section (with code.paths), loaded once in this process and shared by the
    runs that train on them; `loads` counts the loads.

    Loading is deterministic (seeded splits, numpy statistics), so a cached split holds the same tensors as a fresh
    load and results do not change; the training loop only reads them (a search shares them the same way)."""

    def __init__(self, data: Data | None = None) -> None:
        self.data = data  # the user's data from Python, as `train(data=...)` takes it; None: data.name
        self.loads = 0
        self._splits: dict[str, Splits] = {}

    def splits(self, config: ExperimentConfig) -> Splits:
        """The splits `config` trains on, loaded on first use."""
        key = self._key(config)
        if key not in self._splits:
            self._splits[key] = splits_for(config, self.data)
            self.loads += 1
        return self._splits[key]

    def put(self, config: ExperimentConfig, splits: Splits) -> None:
        """Keep splits already loaded for `config` (by a preflight), to be shared as if loaded here."""
        self._splits[self._key(config)] = splits

    @staticmethod
    def _key(config: ExperimentConfig) -> str:
        return json.dumps([config.data.model_dump(mode="json"), list(config.code.paths)], sort_keys=True)


class Worker:
    """What a worker holds for the whole command: the user's model from Python, its data cache, and in a pool its
    number (from 0, in the order the workers started) and the GPU it trains on (None: as each run's config says)."""

    def __init__(self, data: Data | None = None, model: Model | None = None, number: int = 0,
                 device: str | None = None) -> None:
        self.cache = DataCache(data)
        self.model = model
        self.number = number
        self.device = device


_worker: Worker | None = None  # this process's, in a pool's worker


def _start_worker(data: Data | None, model: Model | None, verbosity: int, devices: list[str | None],
                  started: Any) -> None:
    """A pool worker's start: the user's objects arrive once here, not with every run. `started` counts the workers
    started so far (a shared integer): this one takes the next number, and the GPU that `devices` gives it."""
    import optuna

    from dltune.run.runtime import pin_worker

    global _worker
    optuna.logging.set_verbosity(verbosity)  # Optuna's level is per process: log as the parent does
    with started.get_lock():
        number = started.value
        started.value += 1
    device = devices[number % len(devices)] if devices else None
    pin_worker(device)
    _worker = Worker(data, model, number, device)


def _in_worker(fn: Callable[..., Any], *args: Any) -> Any:
    assert _worker is not None, "called outside a pool worker"
    return fn(_worker, *args)


def _ready(_: Worker) -> None:
    """Nothing: submitted once per worker at the start, so that every worker is started then."""


class Pool:
    """`jobs` worker processes for the life of a `with` block; `submit(fn, *args)` runs fn(worker, *args) in one of
    them, where `worker` is that process's Worker (module-level functions only: they travel by name).

    The workers start on entry, in a background thread, while the caller goes on planning: a fork server started
    fresh with dltune.study.ablate imported hands out clean workers (forking a process that holds torch's thread
    pools can deadlock), and the first worker waits for that import, about 2 s on 2 cores.

    `devices`: the GPU of each worker, by its number (runtime.worker_devices; None or none given: each run's device
    as its config says), set in the worker before it trains (runtime.pin_worker)."""

    def __init__(self, jobs: int, *, data: Data | None = None, model: Model | None = None,
                 devices: list[str | None] | None = None) -> None:
        import optuna

        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["dltune.study.ablate"])  # what a worker runs, imported once for all
        self.jobs = jobs
        started = context.Value("i", 0)  # the workers started: each takes the next number (and its GPU)
        self._executor = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_start_worker,
                                             initargs=(data, model, optuna.logging.get_verbosity(), devices or [],
                                                       started))
        self._starter = threading.Thread(target=self._start, name="dltune-pool-start", daemon=True)
        self._started: list[Future] = []

    def _start(self) -> None:
        # each submit while no worker is idle starts one more process, up to `jobs`
        for _ in range(self.jobs):
            try:
                self._started.append(self._executor.submit(_in_worker, _ready))
            except RuntimeError:  # shut down before all had started
                return

    def ready(self) -> bool:
        """Whether the workers have started (the first one waits for the fork server's imports): until then the
        caller's own process may as well train."""
        return len(self._started) == self.jobs and all(f.done() for f in self._started)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return self._executor.submit(_in_worker, fn, *args)

    def __enter__(self) -> Pool:
        self._starter.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._starter.join()
        self._executor.shutdown(wait=True, cancel_futures=kind is not None)
