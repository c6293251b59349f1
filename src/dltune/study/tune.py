"""Automatic search over the experiment file with Optuna: samplers, early stopping of bad trials,
several objectives, resumable storage, many processes and machines.

One trial trains one configuration (`train`, with `on_epoch` reporting the first objective's
per-epoch value to the pruner or to ASHA's rungs). The study's user attributes hold the whole
experiment (dltune.study.studies), so that a `dltune worker` on another machine needs only the storage URL
and the study name.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from dltune.run.checkpoints import Paused
from dltune.experiment.config import ExperimentConfig, load_config, override
from dltune.errors import ConfigError, DltuneError, WriteError
from dltune.files import claim_dir
from dltune.study.records import TrialRecord, TuneData, store_run, store_run_dir
from dltune.run.results import output_folder
from dltune.run.runtime import cores, release_freed_memory
from dltune.study.asha import GO, SPILL, STOP, Ladder, Turn, next_move, rungs
from dltune.study.best import BEST_PRUNED, write_best
from dltune.study.engines import PRUNERS, SAMPLERS, Heartbeat, quiet
from dltune.study.rank_check import distrusted as rungs_distrusted
from dltune.study.sharing import adopt_orphans, claim_trial, sweep_abandoned, training_elsewhere
from dltune.study.studies import (Prepared, create_study, load_tune, open_study, prepare, record, requeue_running,
                                  shadow_study, store_study)
from dltune.study.trials import (handed_to_train, interrupt, lookup, objective_values, per_epoch_objective, tell,
                                 trial_data, trial_track)
from dltune.tracking import Run
from dltune.tracking import ready as tracking_ready
from dltune.tuner.auto import train  # train.auto: each run finds its own settings

__all__ = ["BEST_PRUNED", "PRUNERS", "SAMPLERS", "create_study", "load_tune", "prepare", "tune", "work"]

OnTrial = Callable[[TrialRecord], None]
OnStart = Callable[[int, int], None]  # (finished trials the study holds already, its target)

MAX_FAILURES_IN_A_ROW = 10  # a worker whose every trial fails stops instead of spinning forever


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
    threads = max(1, cores() // jobs)
    if by_ray:
        from dltune.study.ray_backend import run_ray

        run_ray(spec, study, config, prepared, out_dir=out, address=address, timeout=search.timeout,
                on_trial=on_trial, on_start=on_start, should_stop=should_stop)
    elif jobs == 1:
        work(spec, study, out_dir=out, timeout=search.timeout, on_trial=on_trial, on_start=on_start,
             should_stop=should_stop,
             prepared=prepared, config=config)
    else:
        context = multiprocessing.get_context("forkserver")  # see ablate: no fork of a process holding torch
        context.set_forkserver_preload(["dltune.run.loop"])
        procs = [context.Process(target=_work_logged, args=(optuna.logging.get_verbosity(), spec, study),
                                 kwargs={"out_dir": out, "timeout": search.timeout, "threads": threads,
                                         "config": config, "model": model, "data": data})
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
    data = load_tune(spec, study)
    write_best(data, out)
    return data


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


@quiet()
def work(spec: str, study_name: str, *, out_dir: str | Path | None = None, timeout: float | None = None,
         threads: int | None = None, on_trial: OnTrial | None = None, on_start: OnStart | None = None,
         should_stop: Callable[[], bool] | None = None, prepared: Prepared | None = None,
         config: ExperimentConfig | None = None, model: Model | None = None, data: Data | None = None) -> int:
    """Run trials of a stored study until it holds its target of finished trials; the number run here.

    This is `dltune worker`: any number of processes, on any machines that reach the storage, can
    work on one study. A trial that raises is recorded as failed with its error, and the work goes on.
    `should_stop()` is asked between trials and after every epoch: True raises KeyboardInterrupt there;
    the running trial and those paused at an ASHA rung are marked interrupted and queued again
    (trials.interrupt), so the storage stays consistent and the next run trains them (the CLI's Ctrl-C). Trials run one at a time, each in its own thread so that ASHA can pause it.
    `config`: the experiment as its file says; needed when it names code of its own by import path, which a
    worker never imports on the storage's word alone.
    """
    study, config, prepared = open_study(spec, study_name, threads, prepared, config, model=model, data=data)
    base, objectives, directions = prepared.base, prepared.objectives, prepared.directions
    search = config.search
    target = search.trials
    out = Path(out_dir) if out_dir is not None else Path("runs") / study_name
    pruning = PRUNERS.get(search.pruner)
    pruner = pruning.make(search, base.train.epochs)
    shadow = shadow_study(spec, study_name, pruner, directions[0]) if len(objectives) > 1 else None
    reported = shadow or study  # the study that holds the per-epoch values (rungs, pruning)
    maximize = directions[0] == "maximize"
    ladder = Ladder(rungs(search.min_epochs, search.reduction_factor, base.train.epochs) if pruning.pauses else [])
    objective = _objective(prepared, out, shadow, should_stop, ladder, study_name)
    deadline = None if timeout is None else time.monotonic() + timeout
    beats = isinstance(study._storage, optuna.storages._heartbeat.BaseHeartbeat)
    heart = Heartbeat(study._storage)
    ran = failed_in_a_row = 0
    last: TrialRecord | None = None
    seen: dict[int, tuple[int, float]] = {}  # other workers' trials: progress, for training_elsewhere
    swept: set[int] = set()  # failed trials whose run folders were looked at (sweep_abandoned)

    # trials saved to disk at a rung (by id), and how to give each up: RUNNING, beating, without a thread
    on_disk: dict[int, tuple[optuna.Trial, Callable[[], None] | None]] = {}

    def run(trial: optuna.Trial, resume: bool = False) -> int:  # one trial, in its own thread (the ladder's)
        heart.add(trial._trial_id)
        on_disk.pop(trial._trial_id, None)
        try:
            _run(study, trial, objective, resume)
        except Paused as e:  # saved to disk at a rung: it goes on from there, loaded in a new thread
            on_disk[trial._trial_id] = (trial, e.abandon)
            e.again = lambda: run(trial, resume=True)
            raise
        except BaseException:
            heart.discard(trial._trial_id)
            raise
        heart.discard(trial._trial_id)
        return trial.number

    if on_start is not None:
        on_start(sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials(deepcopy=False)),
                 target)
    try:
        while True:
            if should_stop is not None and should_stop():
                raise KeyboardInterrupt
            if failed_in_a_row >= MAX_FAILURES_IN_A_ROW:
                raise DltuneError(f"{failed_in_a_row} trials in a row failed here; the last: {last.error if last else None}")
            if beats:
                optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed and queued again
            trials = study.get_trials(deepcopy=False)
            sweep_abandoned(trials, swept)  # the folders of trials failed as a killed worker's
            states = [t.state for t in trials]
            turn = Turn(finished=sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states),
                        running=sum(s == TrialState.RUNNING for s in states), target=target,
                        late=deadline is not None and time.monotonic() >= deadline, heartbeats=beats,
                        training_elsewhere=training_elsewhere(trials, beats, seen))
            at_rungs = trials if reported is study or not ladder.paused else reported.get_trials(deepcopy=False)
            distrusted = rungs_distrusted(study, at_rungs, sorted(ladder.epochs), base.train.epochs, maximize)
            move = next_move(turn, at_rungs, ladder.waiting(), factor=search.reduction_factor, maximize=maximize,
                             max_paused=search.max_paused, held=ladder.paused.keys(), distrusted=distrusted)
            if move.kind == "end":
                break
            if move.kind == "wait":  # for other workers' trials: to reach the rungs, or to end (or go stale)
                if beats:
                    adopt_orphans(study, trials)  # a trial whose worker died before its first beat: stale, too
                time.sleep(1.0)
                continue
            if move.kind == "start":
                trial = claim_trial(study, target)
                if trial is None:  # yielded its place; two that both yielded try again apart, not in step
                    time.sleep(random.uniform(0.0, 0.5))
                    continue
                heart.add(trial._trial_id)  # beats from now: a kill before its first beat leaves an orphan
                number = ladder.start(lambda t=trial: run(t))
                ran += 1
            elif move.kind == "resume":
                number = ladder.resume(move.trial)
            elif move.kind == "spill":  # it waits on disk, its memory freed
                number = ladder.spill(move.trial)
            else:  # prune: the trial ends as pruned
                number = ladder.stop(move.trial)
            release_freed_memory()  # what the trial freed in its thread's arena; else a long search's RSS grows
            if number is not None:
                last = record(next(t for t in study.get_trials(deepcopy=False) if t.number == number))
                failed_in_a_row = failed_in_a_row + 1 if last.state == "FAIL" else 0
                if on_trial is not None:
                    on_trial(last)
    except BaseException as e:
        ladder.abort()  # paused trials are marked interrupted, as the running one was
        for trial, abandon in on_disk.values():  # and those that wait on disk, their run folders removed
            if abandon is not None:
                abandon()
            with contextlib.suppress(ValueError, optuna.exceptions.UpdateFinishedTrialError):  # failed elsewhere
                interrupt(study, trial, e)
        raise
    finally:
        heart.close()
    return ran


def _work_logged(verbosity: int, *args: Any, **kwargs: Any) -> int:
    """`work` in a process of its own that logs as its parent does (Optuna's level is per process)."""
    optuna.logging.set_verbosity(verbosity)
    return work(*args, **kwargs)


def _run(study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial, bool], Any],
         resume: bool = False) -> None:
    """One trial, told to the study: complete, pruned, or failed with its error (then the work goes on;
    a KeyboardInterrupt marks it interrupted, queues it again, and is raised again). A trial saved to disk at a rung (Paused) is told
    nothing: it still runs, and `resume` goes on with it. A trial that another worker failed meanwhile, as a dead
    worker's (its heartbeats stopped while this process could not reach the database), is left as it is: it was
    queued to run again, and this run of it no longer counts."""
    try:
        _run_told(study, trial, objective, resume)
    except optuna.exceptions.UpdateFinishedTrialError:
        logging.getLogger("dltune").warning(
            f"trial {trial.number} was failed by another worker while this one could not reach the storage (its "
            "heartbeats stopped); what it trained here is dropped, and the trial runs again")


def _run_told(study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial, bool], Any],
              resume: bool) -> None:
    try:
        values = objective(trial, resume)
    except Paused:
        raise
    except optuna.TrialPruned:
        tell(study, trial, state=TrialState.PRUNED)
    except Exception as e:
        if "error" not in trial.user_attrs:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
        tell(study, trial, state=TrialState.FAIL)
        if isinstance(e, WriteError):  # a full disk fails every trial alike: the search stops here
            raise
    except BaseException as e:  # an interrupt (Ctrl-C, should_stop): recorded as such, the trial queued again
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # the interrupt goes on up all the same
            interrupt(study, trial, e)
        raise
    else:
        tell(study, trial, values)


def _objective(prepared: Prepared, out: Path, shadow: optuna.Study | None, should_stop: Callable[[], bool] | None,
               ladder: Ladder, study_name: str) -> Callable[[optuna.Trial, bool], Any]:
    base, space, objectives = prepared.base, prepared.space, prepared.objectives
    per_epoch = per_epoch_objective(objectives)
    on_disk: dict[int, tuple[optuna.Trial, Path]] = {}  # trials saved at a rung: their proxy and run folder

    def objective(trial: optuna.Trial, resume: bool = False) -> float | list[float]:
        overrides = space.sample(trial)  # on a resume, the values it drew before
        trial.set_user_attr("overrides", overrides)
        config = override(base, overrides)
        pruned_at: list[int] = []
        if resume:  # it asks again at the rung it was saved at; the value there is reported already
            proxy, run_dir = on_disk.pop(trial.number)
        else:
            proxy = shadow.ask() if shadow is not None else trial
            run_dir = claim_dir(out / "trials" / f"trial-{trial.number}")  # -2, -3: another study's trial had it
            store_run_dir(trial, run_dir, out)
        reported = resume  # resumed, it first asks again at the rung it was saved at, whose value is reported

        def on_epoch(epoch: int, record: dict[str, Any]) -> str | None:
            nonlocal reported
            if should_stop is not None and should_stop():
                raise KeyboardInterrupt
            value = lookup(record, per_epoch) if per_epoch else None
            if value is None or not math.isfinite(value):
                return None
            if not reported:
                proxy.report(value, epoch)
            reported = False
            rung = epoch in ladder.epochs
            if rung:  # other workers see that this trial waits, and need not wait for it to reach their rung
                trial.set_user_attr("waiting_at", epoch)
            word = ladder.at_rung(proxy.number, epoch)
            if word == SPILL:  # saved to disk, still waiting at the rung (waiting_at stays)
                return "pause"
            if rung:
                trial.set_user_attr("waiting_at", None)
            if word == STOP or proxy.should_prune():
                pruned_at.append(epoch)
                return "stop"
            assert word == GO
            return None

        try:
            data = trial_data(prepared, config)
            result = train(config, on_epoch=on_epoch, out_dir=run_dir, data=handed_to_train(config, data),
                           model=prepared.model, track=trial_track(study_name, trial.number, out), resume=resume)
        except Paused as e:
            on_disk[trial.number] = (proxy, run_dir)

            def abandon() -> None:
                del on_disk[trial.number]
                if shadow is not None:
                    shadow.tell(proxy, state=TrialState.FAIL)
                shutil.rmtree(run_dir, ignore_errors=True)

            e.abandon = abandon
            raise
        except BaseException as e:  # recorded with the trial, which fails; the study goes on (not on Ctrl-C)
            if isinstance(e, Exception):
                trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            if shadow is not None:
                shadow.tell(proxy, state=TrialState.FAIL)
            raise
        store_run(trial, result.record(), out)
        if pruned_at:
            trial.set_user_attr("pruned_at", pruned_at[0])
            if shadow is not None:
                shadow.tell(proxy, state=TrialState.PRUNED)
            raise optuna.TrialPruned(f"pruned after epoch {pruned_at[0]}")
        if result.status == "diverged":
            assert result.divergence is not None
            trial.set_user_attr("error", f"training {result.divergence.describe()}")
            if shadow is not None:
                shadow.tell(proxy, state=TrialState.FAIL)
            raise RuntimeError(trial.user_attrs["error"])
        values, compressed = objective_values(result, objectives, run_dir, data)
        if compressed:
            trial.set_user_attr("compressed", compressed)
        if shadow is not None:
            shadow.tell(proxy, values[0])
        return values[0] if len(values) == 1 else values

    return objective
