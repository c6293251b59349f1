"""Ray Tune as the engine of a search (`dltune tune --backend ray`): the experiment's [search] run as Ray Tune trials,
on a Ray instance started here or on a Ray cluster, with every trial recorded in the search's Optuna study.

The [search] section maps to Ray Tune as follows:
  - sampler and seed: Ray's OptunaSearch asks the stored study for each trial with the very sampler the optuna
    backend builds (engines.sampler_for: same sampler, same search.seed, reseeded per trial number);
  - space: a define-by-run function that samples the parsed [search.space] exactly as the optuna backend's trials
    do (SearchSpace.sample), so conditional entries (`when`) are sampled only when their condition holds;
  - pruner: one of Ray's schedulers, on the first objective's per-epoch value (scheduler_for says which);
  - trials and timeout: new trials until the study holds search.trials finished ones, none started after timeout.
Ray is imported in these functions only: `import dltune` and `dltune --help` never import it.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import optuna

from dltune.errors import ConfigError, DltuneError, MissingExtra
from dltune.experiment.config import ExperimentConfig, override
from dltune.experiment.sections import SearchConfig
from dltune.imports import install_line, need_extra
from dltune.run.runtime import cores, quiet_logger
from dltune.study.engines import PRUNERS, guard, sampler_for, storage_for
from dltune.study.records import TrialRecord
from dltune.study.studies import Prepared
from dltune.study.trials import per_epoch_objective

__all__ = ["check_address", "check_device", "check_pruner", "gpus_per_trial", "ray_session", "require_ray", "run_ray",
           "scheduler_for"]

CONNECT_SECONDS = 10.0  # an --address that does not answer in this time is refused (ray.init would retry for minutes)
DEFAULT_PORTS = {"": 6379, "ray": 10001}  # a head node's GCS port; Ray Client's port (ray://)
# dltune's pruners without a Ray scheduler: the reason, said in the error
NO_SCHEDULER = {"percentile": "Ray Tune has no percentile stopping rule; median (Ray's MedianStoppingRule), asha, "
                              "hyperband or none go with --backend ray"}


def require_ray() -> None:
    """A clear error, before anything is loaded or written, when Ray Tune cannot be imported: Ray missing (dltune's
    ray extra), or Ray without its tune extra's packages."""
    need_extra("ray", "ray", who="--backend ray: Ray Tune")
    try:
        import ray.tune  # noqa: F401
    except ImportError as e:
        raise MissingExtra(f"--backend ray: Ray Tune cannot be imported ({e}); install it with: "
                           f"{install_line('ray')}") from None


def check_pruner(pruner: str) -> None:
    if pruner in NO_SCHEDULER:
        raise ConfigError(f"search.pruner: {pruner!r} with --backend ray: {NO_SCHEDULER[pruner]}")


def check_address(address: str | None, timeout: float = CONNECT_SECONDS) -> None:
    """Refuse, within `timeout` seconds, an address where nothing answers: ray.init would retry for minutes."""
    if address is None or address in ("auto", "local"):
        return
    scheme, _, rest = address.rpartition("://")
    try:
        parts = urlsplit(f"//{rest}")
        host, port = parts.hostname, parts.port or DEFAULT_PORTS.get(scheme)
    except ValueError:
        host = port = None
    if not host or port is None:
        raise ConfigError(f"--address {address}: expected HOST:PORT of a Ray head node (e.g. 10.0.0.5:6379), "
                          "or ray://HOST:PORT for Ray Client")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConfigError(f"--address {address}: no Ray cluster answers there ({reason}); start one with `ray start "
                          f"--head` on that machine and give the address it prints, or leave --address out to start "
                          "Ray on this machine") from None


@contextmanager
def ray_session(address: str | None) -> Iterator[int]:
    """Ray, connected for the block; the CPUs it has. A Ray this process already joined is used as it is and left
    running; one started or joined here is shut down after the block. Call it inside _process_kept: Ray sets
    environment variables of this process."""
    import ray

    if ray.is_initialized():
        if address is not None:
            raise ConfigError(f"--address {address}: this process is connected to a Ray instance already; leave "
                              "--address out to use it, or call ray.shutdown() first")
        yield int(ray.cluster_resources().get("CPU", 1))
        return
    # the trials' own output stays in Ray's session logs: what a trial says to the search (its records, its error)
    # comes back in its reports, and a worker's shutdown noise would only clutter the search's lines
    options: dict[str, Any] = {"address": address, "logging_level": logging.WARNING, "log_to_driver": False}
    if address is None:  # a local instance, for this search only: no dashboard
        options.update(num_cpus=cores(), include_dashboard=False)
    # Ray 2.60 warns that a new local instance uses token authentication (its default; docs/scaling.md): said once
    # in the docs, not in every search's output. The logger's level is the caller's again afterwards.
    try:
        with quiet_logger("ray._private.authentication.authentication_token_setup"):
            ray.init(**options)
    except Exception as e:  # refused, a token that does not match, a version that differs
        where = f"--address {address}: cannot connect to Ray" if address else "Ray could not start on this machine"
        raise ConfigError(f"{where}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") \
            from None
    try:
        yield int(ray.cluster_resources().get("CPU", 1))
    finally:
        ray.shutdown()


@contextmanager
def _process_kept() -> Iterator[None]:
    """Ray sets environment variables of this process (its token mode, usage statistics) and Tune sets SIGINT and
    SIGUSR1 handlers: they are the caller's, and come back as they were (only the variables that changed are set
    again: Ray's threads may read the environment meanwhile). Ctrl-C stays the caller's (the CLI's should_stop, or
    KeyboardInterrupt), never Tune's own stop."""
    env = dict(os.environ)
    main = threading.current_thread() is threading.main_thread()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGUSR1)} if main else {}
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # with verbose=0, Tune's older console output prints nothing at all
    try:
        yield
    finally:
        for key in set(os.environ) - set(env):
            del os.environ[key]
        for key, value in env.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        for number, handler in handlers.items():
            signal.signal(number, handler)


def check_device(device: str) -> None:
    """train.device cuda:N of N >= 1 is refused: Ray gives each trial a card of its own, which the trial sees as
    cuda:0 (the only one visible to it), so cuda:1 would name a card it cannot see."""
    if device.startswith("cuda:") and device != "cuda:0":
        raise ConfigError(f"train.device: {device} with --backend ray, which gives each trial one GPU of its own "
                          "(seen there as cuda:0); use \"cuda\" or \"auto\"")


def gpus_per_trial(device: str, cluster_gpus: float) -> int:
    """The GPUs a trial asks Ray for, where train.device is `device` and the Ray cluster has `cluster_gpus`: one for
    cuda and cuda:N; for auto, one where the cluster has any, else none. Ray hides the GPUs from a trial that asks for
    none (CUDA_VISIBLE_DEVICES is empty there), so that an auto trial without the request would train on the CPU;
    and a trial given one sees that card alone, as cuda:0."""
    if device.startswith("cuda"):
        return 1
    return 1 if device == "auto" and cluster_gpus > 0 else 0


def scheduler_for(search: SearchConfig, epochs: int, direction: str) -> Any:
    """Ray's scheduler for search.pruner, on the first objective's per-epoch value ("objective") by epoch.

    none: FIFOScheduler (every trial trains to the end). asha and optuna-asha: ASHAScheduler with grace_period =
    search.min_epochs, reduction_factor = search.reduction_factor and max_t = train.epochs, so its rungs are the
    optuna backend's (min_epochs · η^k below train.epochs). Ray's ASHA decides when a trial reaches a rung and never
    pauses one, as Optuna's SuccessiveHalvingPruner (optuna-asha); dltune's pausing ASHA has no Ray counterpart.
    hyperband: AsyncHyperBandScheduler with as many brackets as Optuna's HyperbandPruner makes
    (⌊log_η(epochs / min_epochs)⌋ + 1); Ray's synchronous HyperBandScheduler pauses trials and resumes them from
    checkpoints, which a dltune trial does not write mid-run. median: MedianStoppingRule (a trial is stopped when
    its best value so far is worse than the median of the other trials' running averages) after min_epochs, once
    startup_trials trials have results. percentile: none in Ray (check_pruner refuses it). pbt: Ray's
    PopulationBasedTraining, which needs the space (study.ray_pbt builds it).
    """
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, MedianStoppingRule

    from dltune.study.ray_trials import EPOCH, OBJECTIVE

    check_pruner(search.pruner)
    if PRUNERS.get(search.pruner).population:
        raise ValueError("search.pruner pbt: Ray's PopulationBasedTraining, built by study.ray_pbt with the space")
    mode = "max" if direction == "maximize" else "min"
    common: dict[str, Any] = {"time_attr": EPOCH, "metric": OBJECTIVE, "mode": mode}
    if search.pruner == "none" or search.min_epochs >= epochs:  # no rung below the last epoch: nothing to stop
        return FIFOScheduler()
    if search.pruner == "median":
        return MedianStoppingRule(**common, grace_period=search.min_epochs,
                                  min_samples_required=max(1, search.startup_trials))
    brackets = 1
    if search.pruner == "hyperband":
        brackets = int(math.floor(math.log(epochs / search.min_epochs, search.reduction_factor) + 1e-9)) + 1
    return AsyncHyperBandScheduler(**common, max_t=epochs, grace_period=search.min_epochs,
                                   reduction_factor=search.reduction_factor, brackets=brackets)


def run_ray(spec: str, study_name: str, config: ExperimentConfig, prepared: Prepared, *, out_dir: Path,
            address: str | None = None, timeout: float | None = None,
            on_trial: Callable[[TrialRecord], None] | None = None, on_start: Callable[[int, int], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> None:
    """Run Ray Tune trials until the stored study `study_name` holds search.trials finished (complete or pruned)
    ones, none started after `timeout` seconds. Each trial requests parallel.threads CPUs (default 1) and one GPU
    where train.device is "cuda" or "cuda:N", or "auto" on a cluster that has GPUs (gpus_per_trial), and Ray runs
    as many at once as its CPUs and GPUs allow. As with the optuna backend, a trial that fails is recorded and the
    search goes on, until MAX_FAILURES_IN_A_ROW fail in a row (DltuneError).
    `should_stop()` true: the running trials are marked failed and KeyboardInterrupt is raised."""
    from ray import tune

    from dltune.study.ray_trials import MAX_FAILURES_IN_A_ROW, Interrupt, Job, StudySearch, run_trial, trial_name

    search, base = config.search, prepared.base
    threads = base.parallel.threads or 1  # each trial's torch threads, and the CPUs it asks Ray for
    job = Job(replace(prepared, base=override(base, {"parallel.threads": threads})), Path(out_dir).resolve(),
              study_name, per_epoch_objective(prepared.objectives))
    storage = guard(spec, lambda: storage_for(spec, heartbeat=False))  # one writer (this process): no heartbeats
    if PRUNERS.get(search.pruner).population:  # Ray's PopulationBasedTraining (study.ray_pbt)
        from dltune.study.ray_pbt import run_ray_pbt

        study = optuna.load_study(study_name=study_name, storage=storage)
        with _process_kept(), ray_session(address):
            import ray

            gpus = gpus_per_trial(base.train.device, ray.cluster_resources().get("GPU", 0))
            run_ray_pbt(config, job.prepared, study, out=job.out, resources={"cpu": threads, "gpu": gpus},
                        on_trial=on_trial, should_stop=should_stop)
        if should_stop is not None and should_stop():
            raise KeyboardInterrupt
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    searcher = StudySearch(study_name, storage, sampler_for(search, prepared.space), prepared, job.out,
                           target=search.trials, deadline=deadline, on_trial=on_trial, should_stop=should_stop)
    if on_start is not None:
        on_start(searcher.finished, search.trials)
    if searcher.finished >= search.trials:
        return
    with _process_kept(), ray_session(address) as cpus:
        import ray  # connected now: the cluster says what it has

        gpus = gpus_per_trial(base.train.device, ray.cluster_resources().get("GPU", 0))
        resources: dict[str, float] = {"cpu": threads, "gpu": gpus}
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(run_trial, job=job), resources),
            tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=scheduler_for(search, base.train.epochs, prepared.directions[0]),
                num_samples=-1, max_concurrent_trials=max(1, cpus // threads), reuse_actors=True,
                trial_name_creator=trial_name, trial_dirname_creator=trial_name),  # -1: until the searcher ends
            run_config=tune.RunConfig(name="ray", storage_path=str(job.out), verbose=0, stop=Interrupt(searcher)))
        try:
            tuner.fit()
        finally:
            searcher.fail_unfinished()  # nothing is left RUNNING in the study, whatever ended the run
    if searcher.interrupted:
        raise KeyboardInterrupt
    if searcher.failed_in_a_row >= MAX_FAILURES_IN_A_ROW:
        raise DltuneError(f"{searcher.failed_in_a_row} trials in a row failed; the last: {searcher.last_error}")
