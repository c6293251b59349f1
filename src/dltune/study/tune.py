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
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna

from dltune.errors import ConfigError
from dltune.experiment.config import ExperimentConfig, load_config, override
from dltune.run.assembly import Data, Model
from dltune.run.results import output_folder
from dltune.run.runtime import cores, worker_devices
from dltune.study.best import BEST_PRUNED, write_best
from dltune.study.engines import PRUNERS, SAMPLERS, quiet
from dltune.study.pbt_search import pbt_done, pbt_target
from dltune.study.records import TuneData
from dltune.study.studies import (
    DEFAULT_STUDY,
    FINISHED,
    FailingSearch,
    Prepared,
    create_study,
    finished_trials,
    load_tune,
    prepare,
    requeue_running,
    search_study,
    store_study,
)
from dltune.study.warm import enqueue_starts, warm_starts
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
    more: int | None = None,
    timeout: float | None = None,
    jobs: int = 1,
    storage: str | None = None,
    model: Model | None = None,
    data: Data | None = None,
    study: str | None = None,
    experiment: str | None = None,
    on_trial: OnTrial | None = None,
    on_start: OnStart | None = None,
    should_stop: Callable[[], bool] | None = None,
    backend: str = "optuna",
    address: str | None = None,
    enqueue: Sequence[str | Path] = (),
) -> TuneData:
    """Create or resume a study and run trials until it has its target of finished trials (complete or pruned;
    failed and interrupted ones do not count) or `timeout` seconds pass; then write the best experiment
    (best.toml) and read everything back.

    `trials`: the study's target, its total over every run (default search.trials); a study that holds that many
    already runs nothing more. `more`: N finished trials more than the study holds now, instead of `trials`; the
    study must be stored already. `on_start(finished, target)` is told both before any trial. `enqueue`: experiment
    files whose settings are tried first, after those of search.enqueue (warm starts; see study.warm). A search whose
    trials fail one after another (worker.MAX_FAILURES_IN_A_ROW) stops, and its data says why (`stopped`).

    `study`: the study to create or continue. Default: the output's search, which `dltune tune` finds alike: the
    study named after the experiment (`experiment`, default the file's stem when `config` is a path, else
    "search"), or else the one search of this same experiment stored there under another name.

    Storage: SQLite in `out_dir` by default; a journal file there when `jobs` > 1; any Optuna URL
    (PostgreSQL for several machines) with `storage`. `jobs` processes share the study, torch threads
    divided among them; on a machine of several GPUs, where train.device is auto or cuda, each process trains on
    its own card, round-robin (runtime.worker_devices, which logs the assignment). `backend="ray"`: Ray Tune runs
    the trials (dltune.study.ray_backend), on a Ray instance started here or on the cluster at `address`; the study
    is kept in `out_dir` all the same.
    """
    named = experiment or (Path(config).stem if isinstance(config, (str, Path)) else DEFAULT_STUDY)
    if not isinstance(config, ExperimentConfig):
        config = load_config(config)
    if jobs < 1:
        raise ConfigError(f"--jobs: must be at least 1, got {jobs}")
    config = _enqueued(config, enqueue)
    by_ray = _backend(backend, address, jobs, storage, config)
    population = PRUNERS.get(config.search.pruner, path="search.pruner").population
    config = _budget(config, trials, more, timeout, population)
    out = Path(out_dir)
    kept = out.resolve() / ("journal.log" if jobs > 1 else "study.db")  # the storage, unless `storage` names one
    spec = storage or (f"journal:{kept}" if jobs > 1 else f"sqlite:///{kept}")
    if more is not None and storage is None and not kept.is_file():
        raise ConfigError(f"--more {more}: {out} holds no search to add trials to (no {kept.name}); start one "
                          "without --more")
    prepared = prepare(config, data, model)  # everything checked before any trial
    starts = warm_starts(config.search.enqueue, prepared.base, prepared.space)
    with output_folder(out):  # an unreachable tracker or storage leaves no folder behind
        name = study or search_study(spec, config, named)
        if more is not None:
            config = override(config, {"search.trials": _finished_in(spec, name, more) + more})
        tracking_ready(config, Run(config.tracking.experiment or name, "", folder=out))
        opened = store_study(spec, name, config, prepared)
        if not population:  # PBT's warm starts are its first members' settings (study.pbt_search)
            enqueue_starts(opened, starts)  # first in the queue, once: none that the study holds already
    if spec.startswith("journal:") or by_ray:
        requeue_running(opened)  # no heartbeats here: a RUNNING trial is from a killed run
    finished, target = _progress(opened, config, population)
    if on_start is not None:
        on_start(finished, target)
    stopped = None
    if finished < target:
        try:
            _run(by_ray, jobs, spec, name, config, prepared, out, on_trial, should_stop, address, model, data)
        except FailingSearch as e:  # what ran is stored, and read back as for any search
            stopped = str(e)
    searched = replace(load_tune(spec, name), stopped=stopped)
    write_best(searched, out)
    return searched


def _enqueued(config: ExperimentConfig, files: Sequence[str | Path]) -> ExperimentConfig:
    """The experiment with `files` (--enqueue) after the warm starts of its search.enqueue."""
    if not files:
        return config
    return override(config, {"search.enqueue": [*config.search.enqueue, *(str(Path(f).resolve()) for f in files)]})


def _progress(study: optuna.Study, config: ExperimentConfig, population: bool) -> tuple[int, int]:
    """The study's finished trials and its target: for PBT (`population`), the segments ended and due."""
    if population:
        return pbt_done(study.get_trials(deepcopy=False)), pbt_target(config)
    return sum(t.state in FINISHED for t in study.get_trials(deepcopy=False)), config.search.trials


def _budget(config: ExperimentConfig, trials: int | None, more: int | None, timeout: float | None,
            population: bool) -> ExperimentConfig:
    """The experiment with the search's budget from the arguments (`more` is applied once the study is open); a
    PBT search (`population`) takes neither --trials nor --more: its budget is its population's epochs."""
    if population and (trials is not None or more is not None):
        raise ConfigError(f"--{'trials' if trials is not None else 'more'}: not with search.pruner = \"pbt\", "
                          "whose search is search.population runs of train.epochs; set those instead")
    if more is not None:
        if trials is not None:
            raise ConfigError(f"--trials {trials} and --more {more}: give one; --trials is the study's total of "
                              "finished trials, --more adds to what it holds")
        if more < 1:
            raise ConfigError(f"--more: must be at least 1, got {more}")
    budget = {f"search.{k}": v for k, v in (("trials", trials), ("timeout", timeout)) if v is not None}
    try:
        return override(config, budget)
    except ConfigError as e:
        raise ConfigError(f"--trials / --timeout: {e}") from None


def _finished_in(spec: str, name: str, more: int) -> int:
    """The finished trials of the stored search `name`, which --more adds to; an error when there is none."""
    try:
        return finished_trials(spec, name)
    except ConfigError as e:
        raise ConfigError(f"--more {more}: no search to add trials to; {e}") from None


def _run(by_ray: bool, jobs: int, spec: str, name: str, config: ExperimentConfig, prepared: Prepared, out: Path,
         on_trial: OnTrial | None, should_stop: Callable[[], bool] | None, address: str | None,
         model: Model | None, data: Data | None) -> None:
    """The trials, by Ray Tune, by this process, or by `jobs` processes."""
    timeout = config.search.timeout
    if by_ray:
        from dltune.study.ray_backend import run_ray

        run_ray(spec, name, config, prepared, out_dir=out, address=address, timeout=timeout, on_trial=on_trial,
                should_stop=should_stop)
    elif jobs == 1:
        work(spec, name, out_dir=out, timeout=timeout, on_trial=on_trial, should_stop=should_stop,
             prepared=prepared, config=config)
    else:
        _work_in_processes(worker_devices([config.train.device], jobs), spec, name, out_dir=out, timeout=timeout,
                           threads=max(1, cores() // jobs), config=config, model=model, data=data)


def _work_in_processes(devices: list[str | None], spec: str, study: str, **kwargs: Any) -> None:
    """`work(spec, study, **kwargs)` in a process per entry of `devices` at once, each on its card (None: the device
    as the experiment sets it; runtime.worker_devices); any still alive on the way out is ended."""
    context = multiprocessing.get_context("forkserver")  # see ablate: no fork of a process holding torch
    context.set_forkserver_preload(["dltune.run.loop"])
    procs = [context.Process(target=work_logged, args=(optuna.logging.get_verbosity(), device, spec, study),
                             kwargs=kwargs) for device in devices]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()


def _backend(backend: str, address: str | None, jobs: int, storage: str | None, config: ExperimentConfig) -> bool:
    """Whether Ray Tune runs the search; the flags that do not go with the backend are refused before anything
    is loaded or written (a Ray that is not installed, or that does not answer at `address`, too)."""
    if backend not in ("optuna", "ray"):
        raise ConfigError(f"--backend: unknown backend {backend!r}; known: optuna, ray")
    if backend == "optuna":
        if address is not None:
            raise ConfigError("--address: names a Ray cluster, for --backend ray only")
        return False
    from dltune.study.ray_backend import check_address, check_device, check_pruner, require_ray

    if jobs != 1:
        raise ConfigError(f"--jobs {jobs}: not with --backend ray, where Ray runs as many trials at once as its "
                          "CPUs allow (parallel.threads each, default 1); leave --jobs out")
    if storage is not None:
        raise ConfigError("--storage: not with --backend ray, which keeps the study in the output folder "
                          "(study.db, where optuna-dashboard reads it too); leave --storage out")
    check_pruner(config.search.pruner)
    check_device(config.train.device)
    if config.search.enqueue:
        raise ConfigError("search.enqueue: not with --backend ray yet (Ray's searcher takes no queued trials from "
                          "dltune); use the optuna backend, which tries them first")
    require_ray()
    check_address(address)
    return True
