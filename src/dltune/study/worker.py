"""One worker of a search (`dltune worker`, and each of `tune`'s processes): trials of a stored study, taken one at a
time and paused at ASHA's rungs, until the study holds its target of finished trials.

The loop asks asha.next_move what to do from plain data and only carries the move out; a trial runs in its own
thread (the Ladder's), so that it can wait at a rung while another trains.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from dltune.experiment.config import ExperimentConfig
from dltune.experiment.sections import SearchConfig
from dltune.run.assembly import Data, Model
from dltune.run.checkpoints import Paused
from dltune.run.runtime import pin_worker, release_freed_memory
from dltune.study.asha import Ladder, Move, Turn, next_move, rungs
from dltune.study.engines import PRUNERS, Heartbeat, quiet
from dltune.study.objective import make_objective
from dltune.study.pbt_search import pbt_done, pbt_target, work_pbt
from dltune.study.rank_check import distrusted as rungs_distrusted
from dltune.study.records import TrialRecord
from dltune.study.sharing import adopt_orphans, claim_trial, sweep_abandoned, training_elsewhere
from dltune.study.studies import FINISHED, FailingSearch, Prepared, open_study, record, shadow_study, stored_trial
from dltune.study.trials import MAX_FAILURES_IN_A_ROW, Objective, interrupt, run_and_tell
from dltune.study.warm import warm_starts

__all__ = ["MAX_FAILURES_IN_A_ROW", "OnStart", "OnTrial", "run_and_tell", "work", "work_logged"]

OnTrial = Callable[[TrialRecord], None]
OnStart = Callable[[int, int], None]  # (finished trials the study holds already, its target)



@quiet()
def work(spec: str, study_name: str, *, out_dir: str | Path | None = None, timeout: float | None = None,
         threads: int | None = None, on_trial: OnTrial | None = None, on_start: OnStart | None = None,
         should_stop: Callable[[], bool] | None = None, prepared: Prepared | None = None,
         config: ExperimentConfig | None = None, model: Model | None = None, data: Data | None = None) -> int:
    """Run trials of a stored study until it holds its target of finished trials; the number run here.

    This is `dltune worker`: any number of processes, on any machines that reach the storage, can
    work on one study. A trial that raises is recorded as failed with its error, and the work goes on, until
    MAX_FAILURES_IN_A_ROW of this worker's trials failed in a row: then it raises FailingSearch.
    `should_stop()` is asked between trials and after every epoch: True raises KeyboardInterrupt there;
    the running trial and those paused at an ASHA rung are marked interrupted and queued again
    (trials.interrupt), so the storage stays consistent and the next run trains them (the CLI's Ctrl-C).
    Trials run one at a time, each in its own thread so that ASHA can pause it.
    `config`: the experiment as its file says; needed when it names code of its own by import path, which a
    worker never imports on the storage's word alone.
    """
    study, config, prepared = open_study(spec, study_name, threads, prepared, config, model=model, data=data)
    out = Path(out_dir) if out_dir is not None else Path("runs") / study_name
    if PRUNERS.get(config.search.pruner).population:  # population-based training: its own loop
        if on_start is not None:
            on_start(pbt_done(study.get_trials(deepcopy=False)), pbt_target(config))
        starts = warm_starts(config.search.enqueue, prepared.base, prepared.space)
        return work_pbt(study, spec, study_name, config, prepared, out, timeout, should_stop, on_trial, starts)
    worker = _worker(spec, study_name, study, prepared, config.search, out, timeout, should_stop)
    if on_start is not None:
        on_start(sum(t.state in FINISHED for t in study.get_trials(deepcopy=False)), config.search.trials)
    try:
        return _loop(worker, should_stop, on_trial)
    except BaseException as e:
        _give_up(worker, e)
        raise
    finally:
        worker.heart.close()


def work_logged(verbosity: int, device: str | None, *args: Any, **kwargs: Any) -> int:
    """`work` in a process of its own that logs as its parent does (Optuna's level is per process), on the GPU
    `device` (runtime.pin_worker; None: the device as the experiment sets it)."""
    optuna.logging.set_verbosity(verbosity)
    pin_worker(device)
    return work(*args, **kwargs)


@dataclass
class _Worker:
    """What a worker's loop holds between its turns."""

    study: optuna.Study
    reported: optuna.Study  # the study with the per-epoch values (rungs, pruning): a shadow for several objectives
    search: SearchConfig
    epochs: int  # train.epochs of the base experiment: the last rung
    maximize: bool  # the first objective's direction
    ladder: Ladder
    objective: Objective
    heart: Heartbeat
    deadline: float | None  # time.monotonic(): no trial starts or goes on after it
    seen: dict[int, tuple[int, float]] = field(default_factory=dict)  # others' trials' progress (training_elsewhere)
    swept: set[int] = field(default_factory=set)  # failed trials whose run folders were looked at (sweep_abandoned)
    # trials saved to disk at a rung (by number), and how to give each up: RUNNING, beating, without a thread
    on_disk: dict[int, tuple[optuna.Trial, Callable[[], None] | None]] = field(default_factory=dict)


def _worker(spec: str, study_name: str, study: optuna.Study, prepared: Prepared, search: SearchConfig, out: Path,
            timeout: float | None, should_stop: Callable[[], bool] | None) -> _Worker:
    """The loop's state at its start: the pruner's study, the ladder of rungs, the objective, the heartbeat."""
    base, directions = prepared.base, prepared.directions
    pruning = PRUNERS.get(search.pruner)
    pruner = pruning.make(search, base.train.epochs)
    shadow = shadow_study(spec, study_name, pruner, directions[0]) if len(prepared.objectives) > 1 else None
    ladder = Ladder(rungs(search.min_epochs, search.reduction_factor, base.train.epochs) if pruning.pauses else [])
    objective = make_objective(prepared, out, shadow, should_stop, ladder, study_name)
    deadline = None if timeout is None else time.monotonic() + timeout
    return _Worker(study, shadow or study, search, base.train.epochs, directions[0] == "maximize", ladder, objective,
                   Heartbeat(study), deadline)


def _loop(worker: _Worker, should_stop: Callable[[], bool] | None, on_trial: OnTrial | None) -> int:
    """Take turns until the study reaches its target (or the worker its deadline); the trials started here."""
    ran = failed_in_a_row = 0
    last: TrialRecord | None = None
    while True:
        if should_stop is not None and should_stop():
            raise KeyboardInterrupt
        if failed_in_a_row >= MAX_FAILURES_IN_A_ROW:
            raise FailingSearch(f"the search stopped: {failed_in_a_row} trials in a row failed here; the last: "
                                f"{last.error if last else None}")
        move, trials = _next_move(worker)
        if move.kind == "end":
            return ran
        if move.kind == "wait":  # for other workers' trials: to reach the rungs, or to end (or go stale)
            if worker.heart.on:
                adopt_orphans(worker.study, trials)  # a trial whose worker died before its first beat: stale, too
            time.sleep(1.0)
            continue
        trial = None
        if move.kind == "start":
            trial = claim_trial(worker.study, worker.search.trials)
            if trial is None:  # yielded its place; two that both yielded try again apart, not in step
                time.sleep(random.uniform(0.0, 0.5))
                continue
        number = _carry_out(worker, move, trial)
        ran += 1 if move.kind == "start" else 0
        release_freed_memory()  # what the trial freed in its thread's arena; else a long search's RSS grows
        if number is not None:
            last = record(stored_trial(worker.study, number))
            failed_in_a_row = failed_in_a_row + 1 if last.state == "FAIL" else 0
            if on_trial is not None:
                on_trial(last)


def _next_move(worker: _Worker) -> tuple[Move, list[FrozenTrial]]:
    """The next move (asha.next_move), from the study as it stands now; and the study's trials, as read for it."""
    study, ladder, search, beats = worker.study, worker.ladder, worker.search, worker.heart.on
    if beats:
        optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed and queued again
    trials = study.get_trials(deepcopy=False)
    sweep_abandoned(trials, worker.swept)  # the folders of trials failed as a killed worker's
    states = [t.state for t in trials]
    turn = Turn(finished=sum(s in FINISHED for s in states), running=sum(s == TrialState.RUNNING for s in states),
                target=search.trials, late=worker.deadline is not None and time.monotonic() >= worker.deadline,
                heartbeats=beats, training_elsewhere=training_elsewhere(trials, beats, worker.seen))
    at_rungs = trials if worker.reported is study or not ladder.paused else worker.reported.get_trials(deepcopy=False)
    distrusted = rungs_distrusted(study, at_rungs, sorted(ladder.epochs), worker.epochs, worker.maximize)
    move = next_move(turn, at_rungs, ladder.waiting(), factor=search.reduction_factor, maximize=worker.maximize,
                     max_paused=search.max_paused, held=ladder.paused.keys(), distrusted=distrusted)
    return move, trials


def _carry_out(worker: _Worker, move: Move, trial: optuna.Trial | None) -> int | None:
    """Start `trial`, or resume, spill (to disk, its memory freed) or prune the paused trial that `move` names; the
    number of the trial that then finished, or None when the one that ran paused at a rung."""
    ladder = worker.ladder
    if move.kind == "start":
        assert trial is not None
        worker.heart.add(trial.number)  # beats from now: a kill before its first beat leaves an orphan
        return ladder.start(lambda: _hold(worker, trial))
    assert move.trial is not None
    if move.kind == "resume":
        return ladder.resume(move.trial)
    if move.kind == "spill":
        ladder.spill(move.trial)
        return None
    return ladder.stop(move.trial)  # prune: the trial ends as pruned


def _hold(worker: _Worker, trial: optuna.Trial, resume: bool = False) -> int:
    """One trial in its own thread (the ladder's), beating while it trains or waits at a rung; its number."""
    worker.heart.add(trial.number)
    worker.on_disk.pop(trial.number, None)
    try:
        run_and_tell(worker.study, trial, worker.objective, resume)
    except Paused as e:  # saved to disk at a rung: it goes on from there, loaded in a new thread
        worker.on_disk[trial.number] = (trial, e.abandon)
        e.again = lambda: _hold(worker, trial, resume=True)
        raise
    except BaseException:
        worker.heart.discard(trial.number)
        raise
    worker.heart.discard(trial.number)
    return trial.number


def _give_up(worker: _Worker, cause: BaseException) -> None:
    """The loop stops on `cause`: every paused trial is marked interrupted, as the running one was."""
    worker.ladder.abort()
    for trial, abandon in worker.on_disk.values():  # and those that wait on disk, their run folders removed
        if abandon is not None:
            abandon()
        with contextlib.suppress(ValueError, optuna.exceptions.UpdateFinishedTrialError):  # failed elsewhere
            interrupt(worker.study, trial, cause)
