"""Search studies in a storage: the experiment checked and stored with its study, loaded back by any
worker, and the whole search read back (trials, best, importances) from the storage alone."""

from __future__ import annotations

import tomllib
import warnings
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from dltune.config import AblationConfig, ExperimentConfig, SearchConfig, load_config, override, to_toml
from dltune.data import load_data
from dltune.errors import ConfigError, mask_password
from dltune.metrics import METRICS, higher_is_better
from dltune.records import TrialRecord, TuneData
from dltune.search_engines import PRUNERS, SAMPLERS, connect, guard, storage_for
from dltune.space import SearchSpace, parse_space
from dltune.train import check

__all__ = ["SPECIAL", "Prepared", "create_study", "load_tune", "open_study", "prepare", "record", "requeue_running",
           "shadow_study", "store_study"]

SPECIAL = {"latency": "minimize", "parameters": "minimize"}  # objectives that are not recorded metrics


def create_study(config: ExperimentConfig | str | Path, *, storage: str, study: str) -> None:
    """Create (or check) a search study in `storage` without running a trial, for `dltune worker`s to run."""
    if not isinstance(config, ExperimentConfig):
        config = load_config(config)
    store_study(storage, study, config, prepare(config))


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


def load_tune(spec: str, study_name: str) -> TuneData:
    """The whole search, from the storage alone."""
    study = open_study(spec, study_name)[0]
    attrs = study.user_attrs
    trials = [record(t) for t in study.get_trials(deepcopy=False)]
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


def record(t: FrozenTrial) -> TrialRecord:
    a = t.user_attrs
    return TrialRecord(
        number=t.number, state=t.state.name, values=list(t.values) if t.state == TrialState.COMPLETE else None,
        params=a.get("overrides", {}), epochs=a.get("epochs", []), test=a.get("test", {}),
        train_seconds=a.get("train_seconds"), parameters=a.get("parameters"), pruned_at=a.get("pruned_at"),
        error=a.get("error"), run_dir=a.get("run_dir"))


Prepared = tuple[ExperimentConfig, SearchSpace, list[str], list[str]]


def store_study(spec: str, name: str, config: ExperimentConfig, prepared: Prepared) -> optuna.Study:
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


def open_study(spec: str, name: str, threads: int | None = None) -> tuple[optuna.Study, ExperimentConfig, Prepared]:
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


def shadow_study(spec: str, name: str, pruner: optuna.pruners.BasePruner, direction: str) -> optuna.Study:
    """A single-objective twin of a multi-objective study, where the first objective's per-epoch values
    are reported and pruned on (Optuna's pruners work on single-objective studies only)."""
    return optuna.create_study(storage=storage_for(spec, heartbeat=False), study_name=f"{name}:pruning", direction=direction,
                               pruner=pruner, load_if_exists=True)


def requeue_running(study: optuna.Study) -> None:
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
