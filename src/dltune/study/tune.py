"""Automatic search over the experiment file with Optuna: samplers, early stopping of bad trials,
several objectives, resumable storage, many processes and machines.

One trial trains one configuration (`train`, with `on_epoch` reporting the first objective's
per-epoch value to the pruner or to ASHA's rungs: dltune.study.objective), run by one or more workers
(dltune.study.worker) or by Ray Tune (dltune.study.ray_backend). The study's user attributes hold the whole
experiment (dltune.study.studies), so that a `dltune worker` on another machine needs only the storage URL
and the study name.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from dltune.errors import ConfigError
from dltune.experiment.config import ExperimentConfig, load_config, override
from dltune.run.assembly import Data, Model
from dltune.run.results import output_folder
from dltune.run.runtime import cores
from dltune.study.best import BEST_PRUNED, write_best
from dltune.study.engines import PRUNERS, SAMPLERS, quiet
from dltune.study.records import TuneData
from dltune.study.studies import create_study, load_tune, prepare, requeue_running, store_study
from dltune.study.worker import OnStart, OnTrial, work, work_logged
from dltune.tracking import Run
from dltune.tracking import ready as tracking_ready

__all__ = ["BEST_PRUNED", "PRUNERS", "SAMPLERS", "create_study", "load_tune", "prepare", "tune", "work"]


@quiet()
def tune(
    config: ExperimentConfig | str | Path,
    *,
    out_dir: str | Path,
    trials: int | None = None,
    timeout: float | None = None,
    jobs: int = 1,
    storage: str | None = None,
    model: Model | None = None,
    data: Data | None = None,
    study: str = "search",
    on_trial: OnTrial | None = None,
    on_start: OnStart | None = None,
    should_stop: Callable[[], bool] | None = None,
    backend: str = "optuna",
    address: str | None = None,
) -> TuneData:
    """Create or resume the study `study` and run trials until it has `trials` finished ones (complete or
    pruned) or `timeout` seconds pass; then write the best experiment (best.toml) and read everything back.

    Storage: SQLite in `out_dir` by default; a journal file there when `jobs` > 1; any Optuna URL
    (PostgreSQL for several machines) with `storage`. `jobs` processes share the study, torch threads
    divided among them. `backend="ray"`: Ray Tune runs the trials (dltune.study.ray_backend), on a Ray
    instance started here or on the cluster at `address`; the study is kept in `out_dir` all the same.
    """
    if not isinstance(config, ExperimentConfig):
        config = load_config(config)
    if jobs < 1:
        raise ConfigError(f"--jobs: must be at least 1, got {jobs}")
    by_ray = _backend(backend, address, jobs, storage, config.search.pruner)
    budget = {f"search.{k}": v for k, v in (("trials", trials), ("timeout", timeout)) if v is not None}
    try:
        config = override(config, budget)
    except ConfigError as e:
        raise ConfigError(f"--trials / --timeout: {e}") from None
    search = config.search
    prepared = prepare(config, data, model)  # everything checked before any trial
    out = Path(out_dir)
    spec = storage or (f"journal:{out.resolve() / 'journal.log'}" if jobs > 1 else
                       f"sqlite:///{out.resolve() / 'study.db'}")
    with output_folder(out):  # an unreachable tracker or storage leaves no folder behind
        tracking_ready(config, Run(config.tracking.experiment or study, "", folder=out))
        opened = store_study(spec, study, config, prepared)
    if spec.startswith("journal:") or by_ray:
        requeue_running(opened)  # no heartbeats here: a RUNNING trial is from a killed run
    if by_ray:
        from dltune.study.ray_backend import run_ray

        run_ray(spec, study, config, prepared, out_dir=out, address=address, timeout=search.timeout,
                on_trial=on_trial, on_start=on_start, should_stop=should_stop)
    elif jobs == 1:
        work(spec, study, out_dir=out, timeout=search.timeout, on_trial=on_trial, on_start=on_start,
             should_stop=should_stop, prepared=prepared, config=config)
    else:
        _work_in_processes(jobs, spec, study, out_dir=out, timeout=search.timeout, threads=max(1, cores() // jobs),
                           config=config, model=model, data=data)
    searched = load_tune(spec, study)
    write_best(searched, out)
    return searched


def _work_in_processes(jobs: int, spec: str, study: str, **kwargs: Any) -> None:
    """`work(spec, study, **kwargs)` in `jobs` processes at once; any still alive on the way out is ended."""
    context = multiprocessing.get_context("forkserver")  # see ablate: no fork of a process holding torch
    context.set_forkserver_preload(["dltune.run.loop"])
    procs = [context.Process(target=work_logged, args=(optuna.logging.get_verbosity(), spec, study), kwargs=kwargs)
             for _ in range(jobs)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()


def _backend(backend: str, address: str | None, jobs: int, storage: str | None, pruner: str) -> bool:
    """Whether Ray Tune runs the search; the flags that do not go with the backend are refused before anything
    is loaded or written (a Ray that is not installed, or that does not answer at `address`, too)."""
    if backend not in ("optuna", "ray"):
        raise ConfigError(f"--backend: unknown backend {backend!r}; known: optuna, ray")
    if backend == "optuna":
        if address is not None:
            raise ConfigError("--address: names a Ray cluster, for --backend ray only")
        return False
    from dltune.study.ray_backend import check_address, check_pruner, require_ray

    if jobs != 1:
        raise ConfigError(f"--jobs {jobs}: not with --backend ray, where Ray runs as many trials at once as its "
                          "CPUs allow (parallel.threads each, default 1); leave --jobs out")
    if storage is not None:
        raise ConfigError("--storage: not with --backend ray, which keeps the study in the output folder "
                          "(study.db, where optuna-dashboard reads it too); leave --storage out")
    check_pruner(pruner)
    require_ray()
    check_address(address)
    return True
