"""Search studies in a storage: the experiment checked and stored with its study, loaded back by any
worker, and the whole search read back (trials, best, importances) from the storage alone."""

from __future__ import annotations

import math
import tomllib
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from dltune.errors import ConfigError, DltuneError, mask_password
from dltune.experiment.config import ExperimentConfig, load_config, override, to_toml
from dltune.experiment.sections import AblationConfig, CodeConfig, SearchConfig
from dltune.imports import import_paths_in
from dltune.run.assembly import Data, Model, Splits, preflight, splits_for
from dltune.run.checks import check, check_auto_against
from dltune.run.metrics import METRICS, ExtraMetric, extra_metrics, higher_is_better
from dltune.study.engines import (
    PRUNERS,
    SAMPLERS,
    connect,
    folder_of,
    guard,
    quiet,
    sampler_for,
    storage_file,
    storage_for,
    stored_studies,
)
from dltune.study.pbt import check_population
from dltune.study.records import TrialRecord, TuneData, trial_record
from dltune.study.space import SearchSpace, parse_space

__all__ = ["DEFAULT_STUDY", "FINISHED", "SPECIAL", "FailingSearch", "Prepared", "best_pruned", "create_study",
           "finished_trials", "first_direction", "load_tune", "open_study", "prepare", "queued_with", "record",
           "requeue_running", "search_study", "shadow_study", "store_study", "stored_trial"]

# The name of a new search built in code; one loaded from a file is named after the file (its stem).
DEFAULT_STUDY = "search"
# What search.trials counts: trials that ended complete or pruned (a failed or interrupted one holds no place).
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class FailingSearch(DltuneError):
    """A search stopped because trial after trial failed (worker.MAX_FAILURES_IN_A_ROW): it ran, and failed; each
    trial's error is recorded with it. `dltune tune` and `dltune worker` exit 1 on it, not 2."""


# objectives that are not recorded metrics; compressed.*: the trial's model after compress.methods' first entry
SPECIAL = {"latency": "minimize", "parameters": "minimize", "compressed.accuracy": "maximize",
           "compressed.latency_ms": "minimize", "compressed.size_bytes": "minimize"}


@quiet()
def create_study(config: ExperimentConfig | str | Path, *, storage: str, study: str) -> None:
    """Create (or check) a search study in `storage` without running a trial, for `dltune worker`s to run."""
    if not isinstance(config, ExperimentConfig):
        config = load_config(config)
    store_study(storage, study, config, prepare(config))


@dataclass(frozen=True)
class Prepared:
    """A search checked before any trial: the base experiment (without [search] and [ablation]), the space, the
    objectives with their directions, and the base experiment's data, loaded once (the objectives' names depend
    on its task; trials that keep the base's [data] train on it)."""

    base: ExperimentConfig
    space: SearchSpace
    objectives: list[str]
    directions: list[str]
    splits: Splits
    model: Model | None = None  # given from Python: each trial builds (a factory) or copies (a module) its own


def prepare(config: ExperimentConfig, data: Data | None = None, model: Model | None = None) -> Prepared:
    """Check everything a search will use, before any trial (errors name the path). From Python, `data` and
    `model` replace data.name and model.name as in `train`."""
    search = config.search
    base = config.model_copy(update={"search": SearchConfig(), "ablation": AblationConfig()})
    own = {"user_data": data is not None, "user_model": model is not None}
    check(base, **own)
    if any(o.startswith("compressed.") for o in search.objectives):  # each trial compresses its model
        from dltune.compression.run import require_compress

        require_compress()
    space = parse_space(search.space, base)
    check_auto_against(base, {e.path for e in space.entries}, "search.space.")
    for e in space.entries:  # names of registry entries (schedule.name = "cosin") fail here, not mid-study
        for value in e.examples():
            try:
                check(override(base, {e.path: value}), **own)
            except ConfigError as err:
                raise ConfigError(f"search.space.{e.path}: {err}") from None
    SAMPLERS.get(search.sampler, path="search.sampler")
    if PRUNERS.get(search.pruner, path="search.pruner").population:
        check_population(search, space, base, len(search.objectives))
    splits = splits_for(base, data)
    extras = extra_metrics(base.metrics.extra, base.code.paths)
    objectives = [_objective_name(o, splits.task, extras) for o in search.objectives]
    if search.directions and len(search.directions) != len(objectives):
        raise ConfigError(f"search.directions: {len(search.directions)} given for {len(objectives)} objectives")
    directions = [d if d != "auto" else _direction(o, extras) for d, o in
                  zip(search.directions or ["auto"] * len(objectives), objectives, strict=True)]
    _reported_by_own_step(base, objectives)
    if search.pruner != "none" and objectives[0] in SPECIAL:
        raise ConfigError(f"search.pruner: the first objective, {objectives[0]}, has no value per epoch to prune "
                          "on; put a val.* metric first or set pruner = \"none\"")
    if search.sampler == "grid":
        space.grid()
    preflight(base, splits, model)  # the user's code runs once before anything is written
    return Prepared(base, space, objectives, directions, splits, model)


def _reported_by_own_step(base: ExperimentConfig, objectives: list[str]) -> None:
    """A step of the user's own (model.step) reports its loss on val and test, and the task's metrics only through
    model.predict; latency and compressed.* feed (x, y) examples to the model, which its batches are not."""
    if base.model.step is None:
        return
    for objective in objectives:
        if objective == "latency" or objective.startswith("compressed."):
            raise ConfigError(f"search.objectives: {objective} feeds (x, y) examples to the model; with a step of "
                              "your own (model.step) use val.* metrics, train.loss or parameters")
        if base.model.predict is None and objective not in ("val.loss", "test.loss", "train.loss", "parameters"):
            raise ConfigError(f"search.objectives: {objective} is not reported by a step of your own without "
                              "model.predict (val and test report the step's loss alone); use val.loss, or set "
                              "model.predict")


def _objective_name(name: str, task: str, extras: list[ExtraMetric]) -> str:
    if name == "auto":
        return "val.r2" if task == "regression" else "val.accuracy"
    if name == "compressed.accuracy" and task == "regression":
        raise ConfigError("search.objectives: compressed.accuracy needs a classification task, not regression")
    if name in SPECIAL:
        return name
    split, _, metric = name.partition(".")
    known = {"loss", *METRICS[task], *(m.name for m in extras)}
    if split not in ("val", "test", "train") or metric not in known or (split == "train" and metric != "loss"):
        names = [f"{s}.{m}" for s in ("val", "test") for m in sorted(known)] + ["train.loss", *SPECIAL]
        raise ConfigError(f"search.objectives: unknown objective {name!r} for a {task} task; known: {', '.join(names)}")
    return name


def first_direction(config: ExperimentConfig) -> str:
    """The direction of the search's first objective, known before its data is loaded ("auto" is val.accuracy or
    val.r2: both maximized)."""
    search, objective = config.search, config.search.objectives[0]
    if search.directions and search.directions[0] != "auto":
        return search.directions[0]
    if objective == "auto":
        return "maximize"
    return _direction(objective, extra_metrics(config.metrics.extra, config.code.paths))


def _direction(objective: str, extras: list[ExtraMetric]) -> str:
    if objective in SPECIAL:
        return SPECIAL[objective]
    return "maximize" if higher_is_better(objective, extras) else "minimize"


@quiet()
def load_tune(spec: str, study_name: str) -> TuneData:
    """The whole search, from the storage alone."""
    study, config = _stored(spec, study_name)
    attrs = study.user_attrs
    trials = [record(t, folder_of(spec)) for t in study.get_trials(deepcopy=False)]
    multi = len(attrs["objectives"]) > 1
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    sign = -1.0 if attrs["directions"][0] == "maximize" else 1.0
    # several objectives: the Pareto front, best on the first objective first (its config becomes best.toml)
    best = [t.number for t in sorted(study.best_trials, key=lambda t: sign * t.values[0])] if multi and complete \
        else ([study.best_trial.number] if complete else [])
    importances = None
    if len(complete) >= 2 and attrs["pruner"] != "pbt":  # PBT's members: schedules, which importances cannot rank
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
    furthest = None if best else best_pruned(trials, attrs["objectives"][0], attrs["directions"][0])
    env: dict[str, Any] = next((t.user_attrs["environment"] for t in complete if "environment" in t.user_attrs), {})
    return TuneData(study=study_name, objectives=attrs["objectives"], directions=attrs["directions"], trials=trials,
                    best=best, importances=importances, environment=env, config_toml=attrs["config_toml"],
                    best_config_toml=best_toml, sampler=attrs["sampler"], pruner=attrs["pruner"],
                    best_pruned=furthest, best_pruned_config_toml=by_number[furthest].user_attrs.get("config_toml")
                    if furthest is not None else None, top_k=config.search.top_k,
                    rungs_moved=attrs.get("rungs_moved", []))


def best_pruned(trials: list[TrialRecord], objective: str, direction: str) -> int | None:
    """The pruned trial that trained the most epochs and, among those, did best on the first objective's
    per-epoch value (val.* for a test.* objective) at its last epoch; None when no trial was pruned."""
    split, _, name = objective.replace("test.", "val.", 1).partition(".")
    sign = 1.0 if direction == "maximize" else -1.0

    def reached(t: TrialRecord) -> tuple[int, float]:
        value = (t.epochs[-1].get(split) or {}).get(name)
        return len(t.epochs), sign * value if value is not None and math.isfinite(value) else -math.inf

    pruned = sorted((t for t in trials if t.state == "PRUNED" and t.epochs), key=lambda t: t.number)
    return max(pruned, key=reached).number if pruned else None


def record(t: FrozenTrial, base: Path | None = None) -> TrialRecord:
    """A stored trial as a TrialRecord; `base`: the study's output folder, where known (records.run_folder). A PBT
    segment's `pbt` record holds its values per epoch as well (the intermediate values it reported)."""
    attrs = t.user_attrs
    if "pbt" in attrs:
        attrs = {**attrs, "pbt": {**attrs["pbt"], "values": dict(sorted(t.intermediate_values.items()))}}
    return trial_record(t.number, t.state.name, list(t.values) if t.state == TrialState.COMPLETE else None,
                        attrs, base)


def stored_trial(study: optuna.Study, number: int) -> FrozenTrial:
    """Trial `number` of `study` as the storage holds it now."""
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def store_study(spec: str, name: str, config: ExperimentConfig, prepared: Prepared) -> optuna.Study:
    """Create the study `name`, or check that the existing one holds this same experiment and search."""
    space, objectives, directions = prepared.space, prepared.objectives, prepared.directions
    storage = connect(spec)
    sampler = SAMPLERS.get(config.search.sampler)(config.search, space)
    pruner = PRUNERS.get(config.search.pruner).make(config.search, config.train.epochs)
    study = guard(spec, lambda: optuna.create_study(storage=storage, study_name=name,
                                                     directions=[StudyDirection[d.upper()] for d in directions],
                                                     sampler=sampler, pruner=pruner, load_if_exists=True))
    fingerprint = _fingerprint(config)
    if study.user_attrs.get("fingerprint") not in (None, fingerprint):
        raise ConfigError(f"{mask_password(spec)}: study {name!r} holds another experiment or search; choose another "
                          "--study name, or restore the experiment file")
    for key, value in {"dltune": "tune", "fingerprint": fingerprint, "config_toml": to_toml(config),
                       "objectives": objectives, "directions": directions,
                       "sampler": config.search.sampler, "pruner": config.search.pruner}.items():
        study.set_user_attr(key, value)
    return study


def search_study(spec: str, config: ExperimentConfig, named: str) -> str:
    """The study that a search of `config` continues when given no name: the one named `named` (after the
    experiment); else the one search of this same experiment and space that the storage holds under another name
    (started by the CLI, which names it after the file, or from Python, "search"), so that both continue one
    study; else a new one, `named`. Several such searches: an error that lists them."""
    stored = storage_file(spec)
    if stored is not None and not stored.exists():  # nothing stored yet: the file is not created to find that out
        return named
    searches = {name: attrs for name, attrs in stored_studies(spec, connect(spec)).items()
                if attrs.get("dltune") == "tune"}
    if named in searches:
        return named
    fingerprint = _fingerprint(config)
    same = sorted(name for name, attrs in searches.items() if attrs.get("fingerprint") == fingerprint)
    if len(same) > 1:
        raise ConfigError(f"{mask_password(spec)}: holds this search under several names ({', '.join(same)}); "
                          "choose one with --study")
    return same[0] if same else named


def finished_trials(spec: str, name: str) -> int:
    """How many trials of the stored search `name` finished (FINISHED: what search.trials counts)."""
    study, _ = _stored(spec, name)
    return sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))


def _fingerprint(config: ExperimentConfig) -> str:
    """What may not change between the runs of one search: all but the budget (trials, timeout), the warm starts
    (search.enqueue: a later run of the search may add some) and where this machine keeps the code that import
    paths name (code.paths)."""
    search = config.search.model_copy(update={"trials": 1, "timeout": None, "enqueue": ()})
    return to_toml(config.model_copy(update={"search": search, "code": CodeConfig()}))


def open_study(spec: str, name: str, threads: int | None = None, prepared: Prepared | None = None,
               config: ExperimentConfig | None = None, *, model: Model | None = None,
               data: Data | None = None) -> tuple[optuna.Study, ExperimentConfig, Prepared]:
    """A stored search with its experiment, ready to run more trials. The experiment is read from the study,
    unless it names code of the user's own (import paths): a worker imports that only from the experiment file
    that names it (`config`, checked against the study's), never from what the storage says. `prepared`: the
    same search, already prepared in this process (by `tune`), so that it is not checked and loaded again."""
    plain, stored = _stored(spec, name)
    if config is None:
        code = import_paths_in(stored.model_dump())
        if code:
            raise ConfigError(f"study {name!r} runs code of your own ({code[0]}); a worker imports it only from the "
                              "experiment file that names it, never from the storage alone: give that file with "
                              "--config (its modules must be importable on this machine)")
        config = stored
    elif plain.user_attrs.get("fingerprint") != _fingerprint(config):
        raise ConfigError(f"--config: holds another experiment or search than study {name!r} in "
                          f"{mask_password(spec)}")
    if threads is not None:
        config = override(config, {"parallel.threads": threads})
    if prepared is None:
        prepared = prepare(config, data, model)
    elif threads is not None:
        prepared = replace(prepared, base=override(prepared.base, {"parallel.threads": threads}))
    pruner = PRUNERS.get(config.search.pruner).make(config.search, config.train.epochs)
    study = optuna.load_study(storage=connect(spec), study_name=name,
                              sampler=sampler_for(config.search, prepared.space), pruner=pruner)
    return study, config, prepared


def _stored(spec: str, name: str) -> tuple[optuna.Study, ExperimentConfig]:
    """The stored search `name` and its experiment, as the study holds them (nothing checked or loaded)."""
    storage = connect(spec)
    summaries = stored_studies(spec, storage)
    if name not in summaries:
        listed = f"; studies: {', '.join(sorted(summaries))}" if summaries else ""
        raise ConfigError(f"{mask_password(spec)}: holds no study named {name!r}{listed}")
    study = optuna.load_study(storage=storage, study_name=name)
    if study.user_attrs.get("dltune") != "tune":
        raise ConfigError(f"{mask_password(spec)}: study {name!r} is not a dltune search")
    return study, load_config(tomllib.loads(study.user_attrs["config_toml"]))


def shadow_study(spec: str, name: str, pruner: optuna.pruners.BasePruner, direction: str) -> optuna.Study:
    """A single-objective twin of a multi-objective study, where the first objective's per-epoch values
    are reported and pruned on (Optuna's pruners work on single-objective studies only)."""
    return optuna.create_study(storage=storage_for(spec, heartbeat=False), study_name=f"{name}:pruning",
                               direction=StudyDirection[direction.upper()], pruner=pruner, load_if_exists=True)


def requeue_running(study: optuna.Study) -> None:
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number, **queued_with(t.user_attrs)},
                            skip_if_exists=False)


def queued_with(attrs: dict[str, Any]) -> dict[str, Any]:
    """What a trial queued again keeps of its attributes: a PBT segment's place and experiment (study.pbt_search)."""
    return {key: attrs[key] for key in ("pbt", "overrides") if "pbt" in attrs}
