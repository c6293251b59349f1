"""Automatic search over the experiment file with Optuna: samplers, early stopping of bad trials,
several objectives, resumable storage, many processes and machines.

One trial trains one configuration (`train`, with `on_epoch` reporting the first objective's
per-epoch value to the pruner or to ASHA's rungs). The study's user attributes hold the whole
experiment (dltune.studies), so that a `dltune worker` on another machine needs only the storage URL
and the study name.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from dltune.asha import Ladder, promotable, rungs, weakest
from dltune.config import ExperimentConfig, load_config, override, to_toml
from dltune.data import load_data
from dltune.errors import ConfigError, DltuneError
from dltune.records import TrialRecord, TuneData
from dltune.results import ensure_writable
from dltune.search_engines import PRUNERS, SAMPLERS, Heartbeat
from dltune.space import SearchSpace
from dltune.studies import (SPECIAL, create_study, load_tune, open_study, prepare, record, requeue_running,
                            shadow_study, store_study)
from dltune.train import train

__all__ = ["PRUNERS", "SAMPLERS", "create_study", "load_tune", "prepare", "tune", "work"]

OnTrial = Callable[[TrialRecord], None]

MAX_FAILURES_IN_A_ROW = 10  # a worker whose every trial fails stops instead of spinning forever


def tune(
    config: ExperimentConfig | str | Path,
    *,
    out_dir: str | Path,
    trials: int | None = None,
    timeout: float | None = None,
    jobs: int = 1,
    storage: str | None = None,
    study: str = "search",
    on_trial: OnTrial | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TuneData:
    """Create or resume the study `study` and run trials until it has `trials` finished ones (complete or
    pruned) or `timeout` seconds pass; then write the best experiment (best.toml) and read everything back.

    Storage: SQLite in `out_dir` by default; a journal file there when `jobs` > 1; any Optuna URL
    (PostgreSQL for several machines) with `storage`. `jobs` processes share the study, torch threads
    divided among them.
    """
    if not isinstance(config, ExperimentConfig):
        config = load_config(config)
    if jobs < 1:
        raise ConfigError(f"--jobs: must be at least 1, got {jobs}")
    budget = {f"search.{k}": v for k, v in (("trials", trials), ("timeout", timeout)) if v is not None}
    try:
        config = override(config, budget)
    except ConfigError as e:
        raise ConfigError(f"--trials / --timeout: {e}") from None
    search = config.search
    prepared = prepare(config)  # everything checked before any trial
    out = Path(out_dir)
    ensure_writable(out)
    spec = storage or (f"journal:{out.resolve() / 'journal.log'}" if jobs > 1 else
                       f"sqlite:///{out.resolve() / 'study.db'}")
    opened = store_study(spec, study, config, prepared)
    if spec.startswith("journal:"):
        requeue_running(opened)  # a journal has no heartbeats: a RUNNING trial here is from a killed run
    threads = max(1, (os.cpu_count() or 1) // jobs)
    if jobs == 1:
        work(spec, study, out_dir=out, timeout=search.timeout, on_trial=on_trial, should_stop=should_stop)
    else:
        context = multiprocessing.get_context("forkserver")  # see ablate: no fork of a process holding torch
        context.set_forkserver_preload(["dltune.train"])
        procs = [context.Process(target=work, args=(spec, study),
                                 kwargs={"out_dir": out, "timeout": search.timeout, "threads": threads})
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
    if data.best_config_toml:
        (out / "best.toml").write_text(data.best_config_toml)
        _keep_best_weights(data, out)
    return data


def work(spec: str, study_name: str, *, out_dir: str | Path | None = None, timeout: float | None = None,
         threads: int | None = None, on_trial: OnTrial | None = None,
         should_stop: Callable[[], bool] | None = None) -> int:
    """Run trials of a stored study until it holds its target of finished trials; the number run here.

    This is `dltune worker`: any number of processes, on any machines that reach the storage, can
    work on one study. A trial that raises is recorded as failed with its error, and the work goes on.
    `should_stop()` is asked between trials and after every epoch: True raises KeyboardInterrupt there;
    the running trial and those paused at an ASHA rung are marked failed, so the storage stays consistent
    (the CLI's Ctrl-C). Trials run one at a time, each in its own thread so that ASHA can pause it.
    """
    study, config, (base, space, objectives, directions) = open_study(spec, study_name, threads)
    search = config.search
    target = search.trials
    out = Path(out_dir) if out_dir is not None else Path("runs") / study_name
    pruner = PRUNERS.get(search.pruner)(search, base.train.epochs)
    shadow = shadow_study(spec, study_name, pruner, directions[0]) if len(objectives) > 1 else None
    reported = shadow or study  # the study that holds the per-epoch values (rungs, pruning)
    maximize = directions[0] == "maximize"
    ladder = Ladder(rungs(search.min_epochs, search.reduction_factor, base.train.epochs)
                    if search.pruner == "asha" else [])
    objective = _objective(base, space, objectives, out, shadow, should_stop, ladder)
    deadline = None if timeout is None else time.monotonic() + timeout
    beats = isinstance(study._storage, optuna.storages._heartbeat.BaseHeartbeat)
    heart = Heartbeat(study._storage)
    ran = failed_in_a_row = 0
    last: TrialRecord | None = None
    seen: dict[int, tuple[int, float]] = {}  # other workers' trials: progress, for _training_elsewhere

    def run(trial: optuna.Trial) -> int:  # one trial, in its own thread (the ladder's); its number
        heart.add(trial._trial_id)
        try:
            _run(study, trial, objective)
        finally:
            heart.discard(trial._trial_id)
        return trial.number

    try:
        while True:
            if should_stop is not None and should_stop():
                raise KeyboardInterrupt
            if failed_in_a_row >= MAX_FAILURES_IN_A_ROW:
                raise DltuneError(f"{failed_in_a_row} trials in a row failed here; the last: {last.error if last else None}")
            if beats:
                optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed and queued again
            trials = study.get_trials(deepcopy=False)
            states = [t.state for t in trials]
            finished = sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states)
            running = sum(s == TrialState.RUNNING for s in states)  # this process's paused trials included
            late = deadline is not None and time.monotonic() >= deadline
            if (finished >= target or late) and not ladder.paused:
                break
            room = finished + running < target and not late
            promote = None
            if ladder.paused and not late:
                at_rungs = trials if reported is study else reported.get_trials(deepcopy=False)
                promote = promotable(at_rungs, ladder.waiting(), search.reduction_factor, maximize, draining=not room)
            if promote is not None:
                number = ladder.resume(promote)
            elif room:
                trial = _claim(study, target)
                if trial is None:
                    continue
                number = ladder.start(lambda t=trial: run(t))
                ran += 1
            elif ladder.paused and not late and _training_elsewhere(trials, beats, seen):
                time.sleep(1.0)  # another worker's trials will reach the rungs too: decide when they have
                continue
            elif ladder.paused:  # none will be promoted: the paused trials end as pruned
                number = ladder.stop(next(iter(ladder.paused)))
            elif not beats:
                break  # no heartbeats to tell a live trial from a dead one: leave them to their workers
            else:
                time.sleep(1.0)  # the last trials run elsewhere; if their worker died, they go stale and return
                continue
            if number is None and len(ladder.paused) > search.max_paused:
                number = ladder.stop(weakest(reported.get_trials(deepcopy=False), ladder.waiting(), maximize))
            if number is not None:
                last = record(next(t for t in study.get_trials(deepcopy=False) if t.number == number))
                failed_in_a_row = failed_in_a_row + 1 if last.state == "FAIL" else 0
                if on_trial is not None:
                    on_trial(last)
    except BaseException:
        ladder.abort()  # paused trials are marked failed, as the running one was
        raise
    finally:
        heart.close()
    return ran


def _training_elsewhere(trials: list[optuna.trial.FrozenTrial], beats: bool,
                        seen: dict[int, tuple[int, float]]) -> bool:
    """Whether another worker's trial is training: running and not waiting at a rung (none of this
    process's trials trains while the search loop asks). Where the storage has no heartbeats (a journal
    file), a trial that shows no new epoch for max(60 s, 3 of its mean epochs) counts as dead here.
    `seen`: trial number -> (epochs reported, when that count was first seen), kept between calls."""
    now, live = time.monotonic(), False
    for t in trials:
        if t.state != TrialState.RUNNING or t.user_attrs.get("waiting_at") is not None:
            continue
        if beats:
            return True  # a dead worker's trial goes stale and is failed by fail_stale_trials
        epochs = len(t.intermediate_values)
        if seen.get(t.number, (None,))[0] != epochs:
            seen[t.number] = (epochs, now)
        started = t.datetime_start.timestamp() if t.datetime_start else time.time()
        mean_epoch = (time.time() - started) / max(1, epochs)
        live = live or now - seen[t.number][1] < max(60.0, 3 * mean_epoch)
    return live


def _claim(study: optuna.Study, target: int) -> optuna.Trial | None:
    """A new trial, or None when the study reached its target meanwhile: two workers that both saw room
    for the last trial both create one; the lower-numbered runs, the other goes back to the queue
    (WAITING, never run) for a later, larger search to take."""
    trial = study.ask()
    taken = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) or
                (t.state == TrialState.RUNNING and t.number < trial.number)
                for t in study.get_trials(deepcopy=False) if t.number != trial.number)
    if taken < target:
        return trial
    study._storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)
    return None


def _run(study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial], Any]) -> None:
    """One trial, told to the study: complete, pruned, or failed with its error (then the work goes on;
    a KeyboardInterrupt fails the trial and is raised again)."""
    try:
        values = objective(trial)
    except optuna.TrialPruned:
        _tell(study, trial, state=TrialState.PRUNED)
    except Exception as e:
        if "error" not in trial.user_attrs:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
        _tell(study, trial, state=TrialState.FAIL)
    except BaseException:
        _tell(study, trial, state=TrialState.FAIL)
        raise
    else:
        _tell(study, trial, values)


def _tell(study: optuna.Study, trial: optuna.Trial, values: Any = None, state: TrialState | None = None) -> None:
    try:
        study.tell(trial, values, state=state)
    except RuntimeError as e:
        # the grid sampler asks the study to stop once its grid is spent, which Optuna refuses outside
        # optimize(), after storing the trial; this loop stops by its own count
        if "Study.stop" not in str(e):
            raise


def _objective(base: ExperimentConfig, space: SearchSpace, objectives: list[str], out: Path,
               shadow: optuna.Study | None, should_stop: Callable[[], bool] | None,
               ladder: Ladder) -> Callable[[optuna.Trial], Any]:
    first = objectives[0]
    per_epoch = first.replace("test.", "val.", 1) if first not in SPECIAL else None

    def objective(trial: optuna.Trial) -> float | list[float]:
        overrides = space.sample(trial)
        trial.set_user_attr("overrides", overrides)
        config = override(base, overrides)
        pruned_at: list[int] = []
        proxy = shadow.ask() if shadow is not None else trial

        def on_epoch(epoch: int, record: dict[str, Any]) -> str | None:
            if should_stop is not None and should_stop():
                raise KeyboardInterrupt
            value = _lookup(record, per_epoch) if per_epoch else None
            if value is None or not math.isfinite(value):
                return None
            proxy.report(value, epoch)
            rung = epoch in ladder.epochs
            if rung:  # other workers see that this trial waits, and need not wait for it to reach their rung
                trial.set_user_attr("waiting_at", epoch)
            go_on = ladder.at_rung(proxy.number, epoch)
            if rung:
                trial.set_user_attr("waiting_at", None)
            if not go_on or proxy.should_prune():
                pruned_at.append(epoch)
                return "stop"
            return None

        run_dir = out / "trials" / f"trial-{trial.number}"
        try:
            result = train(config, on_epoch=on_epoch, out_dir=run_dir)
        except BaseException as e:  # recorded with the trial, which fails; the study goes on (not on Ctrl-C)
            if isinstance(e, Exception):
                trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            if shadow is not None:
                shadow.tell(proxy, state=TrialState.FAIL)
            raise
        for key, value in (("status", result.status), ("test", result.test), ("epochs", result.to_dict()["epochs"]),
                           ("train_seconds", result.train_seconds), ("parameters", result.parameters),
                           ("run_dir", str(run_dir)), ("config_toml", to_toml(result.config)),
                           ("environment", result.environment)):
            trial.set_user_attr(key, value)
        if pruned_at:
            trial.set_user_attr("pruned_at", pruned_at[0])
            if shadow is not None:
                shadow.tell(proxy, state=TrialState.PRUNED)
            raise optuna.TrialPruned(f"pruned after epoch {pruned_at[0]}")
        if result.status == "diverged":
            trial.set_user_attr("error", f"training diverged at epoch {len(result.epochs)} (loss not finite)")
            if shadow is not None:
                shadow.tell(proxy, state=TrialState.FAIL)
            raise RuntimeError(trial.user_attrs["error"])
        values = [_value(result, name, config) for name in objectives]
        if shadow is not None:
            shadow.tell(proxy, values[0])
        return values[0] if len(values) == 1 else values

    return objective


def _lookup(record: dict[str, Any], path: str) -> float | None:
    split, _, name = path.partition(".")
    return (record.get(split) or {}).get(name)


def _value(result: Any, name: str, config: ExperimentConfig) -> float:
    if name == "parameters":
        return float(result.parameters)
    if name == "latency":
        return _latency_ms(result.model, config)
    if name.startswith("test."):
        return float(result.test[name[5:]])
    return float(result.metric(name))


def _latency_ms(model: torch.nn.Module, config: ExperimentConfig) -> float:
    """Inference time per test example in milliseconds: best of 3 passes over the test split."""
    x = load_data(config.data).test[0]
    device = next(model.parameters()).device
    model.eval()
    best = math.inf
    with torch.inference_mode():
        for _ in range(3):
            start = time.perf_counter()
            for i in range(0, len(x), config.batch.eval_size):
                model(x[i : i + config.batch.eval_size].to(device))
            best = min(best, time.perf_counter() - start)
    return best * 1000 / len(x)


def _keep_best_weights(data: TuneData, out: Path) -> None:
    best = next(t for t in data.trials if t.number == data.best[0])
    source = Path(best.run_dir or "") / "model.safetensors"
    if source.is_file():
        (out / "best").mkdir(exist_ok=True)
        shutil.copy2(source, out / "best" / "model.safetensors")
        (out / "best" / "config.toml").write_text(data.best_config_toml or "")
