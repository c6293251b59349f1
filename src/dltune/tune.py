"""Automatic search over the experiment file with Optuna: samplers, early stopping of bad trials,
several objectives, resumable storage, many processes and machines.

One trial trains one configuration (`train`, with `on_epoch` reporting the first objective's
per-epoch value to the pruner). The study's user attributes hold the whole experiment, so that a
`dltune worker` on another machine needs only the storage URL and the study name.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import shutil
import time
import tomllib
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from dltune.asha import Ladder, promotable, rungs, weakest
from dltune.config import AblationConfig, ExperimentConfig, SearchConfig, load_config, override, to_toml
from dltune.data import load_data
from dltune.errors import ConfigError, DltuneError, mask_password
from dltune.metrics import METRICS, higher_is_better
from dltune.records import TrialRecord, TuneData
from dltune.search_engines import PRUNERS, SAMPLERS, Heartbeat, connect, guard, storage_for
from dltune.space import SearchSpace, parse_space
from dltune.results import ensure_writable
from dltune.train import check, train

__all__ = ["PRUNERS", "SAMPLERS", "create_study", "load_tune", "prepare", "tune", "work"]

OnTrial = Callable[[TrialRecord], None]

SPECIAL = {"latency": "minimize", "parameters": "minimize"}  # objectives that are not recorded metrics
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
    opened = _create(spec, study, config, prepared)
    if spec.startswith("journal:"):
        _requeue_running(opened)  # a journal has no heartbeats: a RUNNING trial here is from a killed run
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


def create_study(config: ExperimentConfig | str | Path, *, storage: str, study: str) -> None:
    """Create (or check) a search study in `storage` without running a trial, for `dltune worker`s to run."""
    if not isinstance(config, ExperimentConfig):
        config = load_config(config)
    _create(storage, study, config, prepare(config))


def prepare(config: ExperimentConfig) -> tuple[ExperimentConfig, SearchSpace, list[str], list[str]]:
    """The base experiment (without [search] and [ablation]), the space, objectives and directions."""
    search = config.search
    base = config.model_copy(update={"search": SearchConfig(), "ablation": AblationConfig()})
    check(base)
    space = parse_space(search.space, base)
    for e in space.entries:  # names of registry entries (schedule.name = "cosin") fail here, not mid-study
        for value in e.examples():
            try:
                check(override(base, {e.path: value}))
            except ConfigError as err:
                raise ConfigError(f"search.space.{e.path}: {err}") from None
    SAMPLERS.get(search.sampler, path="search.sampler")
    PRUNERS.get(search.pruner, path="search.pruner")
    task = load_data(base.data).task
    objectives = [_objective_name(o, task) for o in search.objectives]
    if search.directions and len(search.directions) != len(objectives):
        raise ConfigError(f"search.directions: {len(search.directions)} given for {len(objectives)} objectives")
    directions = [d if d != "auto" else _direction(o) for d, o in
                  zip(search.directions or ["auto"] * len(objectives), objectives)]
    if search.pruner != "none" and objectives[0] in SPECIAL:
        raise ConfigError(f"search.pruner: the first objective, {objectives[0]}, has no value per epoch to prune "
                          "on; put a val.* metric first or set pruner = \"none\"")
    if search.sampler == "grid":
        space.grid()
    return base, space, objectives, directions


def _objective_name(name: str, task: str) -> str:
    if name == "auto":
        return "val.r2" if task == "regression" else "val.accuracy"
    if name in SPECIAL:
        return name
    split, _, metric = name.partition(".")
    known = {"loss", *METRICS[task]}
    if split not in ("val", "test", "train") or metric not in known or (split == "train" and metric != "loss"):
        names = [f"{s}.{m}" for s in ("val", "test") for m in sorted(known)] + ["train.loss", *SPECIAL]
        raise ConfigError(f"search.objectives: unknown objective {name!r} for a {task} task; known: {', '.join(names)}")
    return name


def _direction(objective: str) -> str:
    if objective in SPECIAL:
        return SPECIAL[objective]
    return "maximize" if higher_is_better(objective) else "minimize"


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
    study, config, (base, space, objectives, directions) = _load(spec, study_name, threads)
    search = config.search
    target = search.trials
    out = Path(out_dir) if out_dir is not None else Path("runs") / study_name
    pruner = PRUNERS.get(search.pruner)(search, base.train.epochs)
    shadow = _shadow(spec, study_name, pruner, directions[0]) if len(objectives) > 1 else None
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
            states = [t.state for t in study.get_trials(deepcopy=False)]
            finished = sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states)
            running = sum(s == TrialState.RUNNING for s in states)  # this process's paused trials included
            late = deadline is not None and time.monotonic() >= deadline
            if (finished >= target or late) and not ladder.paused:
                break
            room = finished + running < target and not late
            promote = None
            if ladder.paused and not late:
                promote = promotable(reported.get_trials(deepcopy=False), ladder.waiting(), search.reduction_factor,
                                     maximize, draining=not room)
            if promote is not None:
                number = ladder.resume(promote)
            elif room:
                trial = _claim(study, target)
                if trial is None:
                    continue
                number = ladder.start(lambda t=trial: run(t))
                ran += 1
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
                last = _record(next(t for t in study.get_trials(deepcopy=False) if t.number == number))
                failed_in_a_row = failed_in_a_row + 1 if last.state == "FAIL" else 0
                if on_trial is not None:
                    on_trial(last)
    except BaseException:
        ladder.abort()  # paused trials are marked failed, as the running one was
        raise
    finally:
        heart.close()
    return ran


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
            if not ladder.at_rung(proxy.number, epoch) or proxy.should_prune():
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


def load_tune(spec: str, study_name: str) -> TuneData:
    """The whole search, from the storage alone."""
    study = _load(spec, study_name)[0]
    attrs = study.user_attrs
    trials = [_record(t) for t in study.get_trials(deepcopy=False)]
    multi = len(attrs["objectives"]) > 1
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    sign = -1.0 if attrs["directions"][0] == "maximize" else 1.0
    # several objectives: the Pareto front, best on the first objective first (its config becomes best.toml)
    best = [t.number for t in sorted(study.best_trials, key=lambda t: sign * t.values[0])] if multi and complete \
        else ([study.best_trial.number] if complete else [])
    importances = None
    if len(complete) >= 2:
        try:
            # single objective: Optuna reads the direction itself; several: the first, signed so lower is better
            target = (lambda t: sign * t.values[0]) if multi else None
            with warnings.catch_warnings():  # few trials per regime: the numbers say so themselves
                warnings.simplefilter("ignore", UserWarning)
                importances = optuna.importance.get_param_importances(study, target=target)
        except (RuntimeError, ValueError):
            importances = None  # e.g. every complete trial took the same values
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    best_toml = by_number[best[0]].user_attrs.get("config_toml") if best else None
    env = next((t.user_attrs["environment"] for t in complete if "environment" in t.user_attrs), {})
    return TuneData(study=study_name, objectives=attrs["objectives"], directions=attrs["directions"], trials=trials,
                    best=best, importances=importances, environment=env, config_toml=attrs["config_toml"],
                    best_config_toml=best_toml, sampler=attrs["sampler"], pruner=attrs["pruner"])


def _record(t: FrozenTrial) -> TrialRecord:
    a = t.user_attrs
    return TrialRecord(
        number=t.number, state=t.state.name, values=list(t.values) if t.state == TrialState.COMPLETE else None,
        params=a.get("overrides", {}), epochs=a.get("epochs", []), test=a.get("test", {}),
        train_seconds=a.get("train_seconds"), parameters=a.get("parameters"), pruned_at=a.get("pruned_at"),
        error=a.get("error"), run_dir=a.get("run_dir"))


Prepared = tuple[ExperimentConfig, SearchSpace, list[str], list[str]]


def _create(spec: str, name: str, config: ExperimentConfig, prepared: Prepared) -> optuna.Study:
    """Create the study `name`, or check that the existing one holds this same experiment and search."""
    _, space, objectives, directions = prepared
    storage = connect(spec)
    sampler = SAMPLERS.get(config.search.sampler)(config.search, space)
    pruner = PRUNERS.get(config.search.pruner)(config.search, config.train.epochs)
    study = guard(spec, lambda: optuna.create_study(storage=storage, study_name=name, directions=directions,
                                                     sampler=sampler, pruner=pruner, load_if_exists=True))
    # the budget (trials, timeout) may change between invocations; nothing else may
    fingerprint = to_toml(config.model_copy(update={"search": config.search.model_copy(
        update={"trials": 1, "timeout": None})}))
    if study.user_attrs.get("fingerprint") not in (None, fingerprint):
        raise ConfigError(f"{mask_password(spec)}: study {name!r} holds another experiment or search; choose another "
                          "--study name, or restore the experiment file")
    for key, value in {"dltune": "tune", "fingerprint": fingerprint, "config_toml": to_toml(config),
                       "objectives": objectives, "directions": directions,
                       "sampler": config.search.sampler, "pruner": config.search.pruner}.items():
        study.set_user_attr(key, value)
    return study


def _load(spec: str, name: str, threads: int | None = None) -> tuple[optuna.Study, ExperimentConfig, Prepared]:
    """A stored search with its experiment (read from the study), ready to run more trials."""
    storage = connect(spec)
    summaries = {s.study_name for s in guard(spec, lambda: optuna.get_all_study_summaries(storage))}
    if name not in summaries:
        listed = f"; studies: {', '.join(sorted(summaries))}" if summaries else ""
        raise ConfigError(f"{mask_password(spec)}: holds no study named {name!r}{listed}")
    plain = optuna.load_study(storage=storage, study_name=name)
    if plain.user_attrs.get("dltune") != "tune":
        raise ConfigError(f"{mask_password(spec)}: study {name!r} is not a dltune search")
    config = load_config(tomllib.loads(plain.user_attrs["config_toml"]))
    if threads is not None:
        config = override(config, {"parallel.threads": threads})
    prepared = prepare(config)
    study = optuna.load_study(storage=storage, study_name=name,
                              sampler=SAMPLERS.get(config.search.sampler)(config.search, prepared[1]),
                              pruner=PRUNERS.get(config.search.pruner)(config.search, config.train.epochs))
    return study, config, prepared


def _shadow(spec: str, name: str, pruner: optuna.pruners.BasePruner, direction: str) -> optuna.Study:
    """A single-objective twin of a multi-objective study, where the first objective's per-epoch values
    are reported and pruned on (Optuna's pruners work on single-objective studies only)."""
    return optuna.create_study(storage=storage_for(spec, heartbeat=False), study_name=f"{name}:pruning", direction=direction,
                               pruner=pruner, load_if_exists=True)


def _requeue_running(study: optuna.Study) -> None:
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)


def _keep_best_weights(data: TuneData, out: Path) -> None:
    best = next(t for t in data.trials if t.number == data.best[0])
    source = Path(best.run_dir or "") / "model.safetensors"
    if source.is_file():
        (out / "best").mkdir(exist_ok=True)
        shutil.copy2(source, out / "best" / "model.safetensors")
        (out / "best" / "config.toml").write_text(data.best_config_toml or "")
