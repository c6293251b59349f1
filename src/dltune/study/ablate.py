"""Ablation: a baseline and named variants, each over N seeds, stored as one Optuna study.

Every (variant, seed) pair is one trial whose attributes hold the variant, seed, metrics, per-epoch
history and timings, so that `optuna-dashboard` opens the same storage and `dltune report` rebuilds
everything from the storage alone. A stopped or crashed ablation resumes: pairs already recorded are
not run again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from dltune.errors import ConfigError, mask_password
from dltune.experiment.config import ExperimentConfig, load_config, override, to_toml
from dltune.experiment.sections import AblationConfig, SearchConfig
from dltune.files import folder_lock
from dltune.run.assembly import Data, Model, preflight
from dltune.run.checks import check, check_auto_against
from dltune.run.metrics import extra_metrics, higher_is_better
from dltune.run.results import output_folder
from dltune.run.runtime import cores, worker_devices
from dltune.study.engines import create_sqlite_file, folder_of, guard, quiet, require_driver, stored_studies
from dltune.study.pool import Pool, Worker
from dltune.study.records import AblationData, PairResult, Variant, pair_result, run_attrs
from dltune.tracking import Run, require_trackers
from dltune.tracking import ready as tracking_ready
from dltune.tuner.auto import train  # train.auto: each run finds its own settings

__all__ = ["ablate", "load_ablation", "open_study", "plan"]

STUDY = "ablation"
BASELINE = "baseline"
OnResult = Callable[[PairResult, int, int], None]  # (result, done so far, total)


def plan(config: ExperimentConfig, data: Data | None = None,
         model: Model | None = None) -> list[tuple[Variant, ExperimentConfig]]:
    """The baseline and every variant with its resolved config. Bad variants fail here, before any
    training, all of them in one error that names each variant and path."""
    baseline = config.model_copy(update={"ablation": AblationConfig(), "search": SearchConfig()})
    own = {"user_data": data is not None, "user_model": model is not None}
    check(baseline, **own)
    require_trackers(baseline)
    planned = [(Variant(BASELINE, {}, {}), baseline)]
    errors: list[str] = []
    applied: dict[str, Any] = {}
    for name, raw in config.ablation.variants.items():
        changes = _flatten(raw)
        applied = {**applied, **changes} if config.ablation.mode == "cumulative" else changes
        try:
            planned.append((Variant(name, changes, dict(applied)),
                            _variant_config(baseline, name, changes, applied, own)))
        except ConfigError as e:
            errors.append(f"ablation.variants.{name}: {e}")
    if errors:
        bad = "1 variant is" if len(errors) == 1 else f"{len(errors)} variants are"
        raise ConfigError(errors[0] if len(errors) == 1 else f"{bad} invalid:\n" + "\n".join(
            "  " + line for e in errors for line in e.splitlines()))
    return planned


def _variant_config(baseline: ExperimentConfig, name: str, changes: dict[str, Any], applied: dict[str, Any],
                    own: dict[str, bool]) -> ExperimentConfig:
    if name == BASELINE:
        raise ConfigError(f"the name {BASELINE!r} is taken by the baseline")
    if not changes:
        raise ConfigError('changes nothing; give dotted paths, e.g. { "optim.lr" = 3e-3 }')
    bad = [path for path in changes if path.split(".")[0] == "ablation"]
    if bad:
        raise ConfigError(f"{bad[0]}: a variant cannot change the ablation itself")
    variant = override(baseline, applied)
    check(variant, **own)
    check_auto_against(variant, set(applied))
    return variant


@quiet()
def ablate(
    config: ExperimentConfig | str | Path,
    *,
    out_dir: str | Path,
    seeds: int | None = None,
    jobs: int = 1,
    storage: str | None = None,
    name: str | None = None,
    on_result: OnResult | None = None,
    model: Model | None = None,
    data: Data | None = None,
) -> AblationData:
    """Run every (variant, seed) pair not yet recorded in the storage, then read the whole ablation back.

    `jobs` > 1 runs pairs in that many processes with torch threads divided so that
    jobs × threads <= cores; on a machine of several GPUs, where the baseline or a variant trains on train.device
    auto or cuda, each process trains on its own card, round-robin (runtime.worker_devices, which logs the
    assignment), and this process, which trains pairs too while the workers start, on torch's current one.
    The storage defaults to SQLite in `out_dir` (study.db); `name` is the Optuna study's name in it (several
    ablations can share one database under different names). Default, as `dltune ablate` names it: the file's stem
    when `config` is a path; for a config built in code, the one ablation that the storage holds already, else
    "ablation".
    """
    if name is None:
        name = Path(config).stem if isinstance(config, (str, Path)) else _stored(storage, out_dir) or STUDY
    if not isinstance(config, ExperimentConfig):
        config = load_config(config)
    n_seeds = seeds if seeds is not None else config.ablation.seeds
    if n_seeds < 1:
        raise ConfigError(f"--seeds: must be at least 1, got {n_seeds}")
    if jobs < 1:
        raise ConfigError(f"--jobs: must be at least 1, got {jobs}")
    if storage is not None:
        require_driver(storage)
    # the workers start first, and import torch while this process plans and opens the storage
    devices = worker_devices(_devices_set(config), jobs) if jobs > 1 else None
    with Pool(jobs, data=data, model=model, devices=devices) if jobs > 1 else nullcontext() as pool:
        planned = plan(config, data, model)
        ready = preflight(planned[0][1], data, model)  # the user's code runs once before anything is written
        out = Path(out_dir)
        with output_folder(out):  # an unreachable tracker leaves no folder behind
            tracking_ready(config, Run(config.tracking.experiment or name, "", folder=out))
        with folder_lock(out, "dltune ablate"):  # one ablation process per folder: it removes leftover runs
            here = Worker(data, model)  # this process's runs share the splits that the preflight loaded
            here.cache.put(planned[0][1], ready.splits)
            _run_pairs(config, planned, out, n_seeds, here, pool, storage or default_storage(out), name, on_result)
    return load_ablation(storage or default_storage(out), name)


def _devices_set(config: ExperimentConfig) -> list[str]:
    """The train.device of the baseline and of each variant that sets one (the runs that the workers train)."""
    variants = [_flatten(raw).get("train.device") for raw in config.ablation.variants.values()]
    return [config.train.device, *(str(d) for d in variants if d is not None)]


def _stored(storage: str | None, out_dir: str | Path) -> str | None:
    """The name of the one ablation in the storage (None: none yet, or several to choose from)."""
    if storage is None and not (Path(out_dir) / "study.db").is_file():
        return None
    spec = storage or default_storage(out_dir)
    names = [study for study, attrs in stored_studies(spec, spec).items() if attrs.get("dltune") == "ablation"]
    return names[0] if len(names) == 1 else None


def _run_pairs(config: ExperimentConfig, planned: list[tuple[Variant, ExperimentConfig]], out: Path, n_seeds: int,
               here: Worker, pool: Pool | None, storage: str, name: str, on_result: OnResult | None) -> None:
    """Train every pair not yet recorded, in this process (`here`) or in the pool's workers, and record each one
    as it finishes, in one write. While the workers start, this process trains pairs too, with their threads."""
    study = open_study(storage, name, create=True)
    seed_list = [config.train.seed + k for k in range(n_seeds)]
    _claim(study, config, planned, seed_list)
    _fail_stale(study)

    done = {(t.user_attrs["variant"], t.user_attrs["seed"]) for t in _recorded(study)}
    # the longest first (by batches trained), so that no worker is left with a long run at the end while the others
    # wait; the order of the runs does not change their results
    todo = deque(sorted(((v, c, s) for v, c in planned for s in seed_list if (v.name, s) not in done),
                        key=lambda pair: -_batches(pair[1])))
    total = len(planned) * len(seed_list)
    finished = total - len(todo)
    threads = None if pool is None else max(1, cores() // pool.jobs)

    def pair(variant: Variant, cfg: ExperimentConfig, seed: int) -> tuple[dict[str, Any], str, Run]:
        return (_pair_config(cfg, seed, threads), str(_run_dir(out, variant.name, seed)),
                _tracked_as(name, variant, seed, out))

    running: dict[Future, tuple[Variant, int]] = {}
    while todo or running:
        while pool is not None and todo and len(running) < 2 * pool.jobs:  # enough queued to keep workers busy
            variant, cfg, seed = todo.popleft()
            running[pool.submit(_run_pair, *pair(variant, cfg, seed))] = (variant, seed)
        if todo and (pool is None or not pool.ready()):
            variant, cfg, seed = todo.popleft()
            result = _run_pair(here, *pair(variant, cfg, seed))
            finished += 1
            _record(study, variant, seed, result, out, config, on_result, finished, total)
            continue
        for future in wait(running, return_when=FIRST_COMPLETED).done:
            variant, seed = running.pop(future)
            finished += 1
            _record(study, variant, seed, future.result(), out, config, on_result, finished, total)


def default_storage(out_dir: str | Path) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / 'study.db'}"


def open_study(storage: str, name: str | None = None, *, create: bool = False) -> optuna.Study:
    """The ablation study `name` in `storage` (None: the only ablation there); a storage that cannot be
    reached is a clear error, with any password masked."""
    if create:
        create_sqlite_file(storage)  # with the umask's mode, not SQLite's 0o644
        return guard(storage, lambda: optuna.create_study(storage=storage, study_name=name or STUDY,
                                                          direction="maximize", load_if_exists=True))
    summaries = stored_studies(storage, storage)
    names = [study for study, attrs in summaries.items() if attrs.get("dltune") == "ablation"]
    if name is None and len(names) != 1:
        found = f"ablations {', '.join(names)}; choose one with --study" if names else "no ablation"
        raise ConfigError(f"{mask_password(storage)}: holds {found}")
    if name is not None and name not in summaries:
        raise ConfigError(f"{mask_password(storage)}: holds no ablation named {name!r}")
    return guard(storage, lambda: optuna.load_study(storage=storage, study_name=name or names[0]))


@quiet()
def load_ablation(storage: str, name: str | None = None) -> AblationData:
    """The whole ablation, read back from the storage alone."""
    study = open_study(storage, name)
    attrs = study.user_attrs
    if attrs.get("dltune") != "ablation":
        raise ConfigError(f"{mask_password(storage)}: the study {study.study_name!r} is not a dltune ablation")
    variants = [Variant(v["name"], v["changes"], v["applied"]) for v in attrs["variants"]]
    results = [pair_result(t.user_attrs, folder_of(storage)) for t in _recorded(study)]
    metric = attrs.get("metric") or "test.accuracy"
    return AblationData(
        study=study.study_name, metric=metric, higher_is_better=attrs.get("higher_is_better", higher_is_better(metric)),
        mode=attrs["mode"], seeds=sorted({r.seed for r in results} | set(attrs.get("seeds", []))),
        variants=variants, results=results, environment=attrs.get("environment", {}),
        config_toml=attrs.get("config_toml", ""),
    )


def _claim(study: optuna.Study, config: ExperimentConfig, planned: list[tuple[Variant, ExperimentConfig]],
           seeds: list[int]) -> None:
    """Write what this ablation is into the study, or check that the study holds this same ablation: the baseline
    as its config.toml says it (to_toml, which leaves out keys at None and the keys added later at their defaults,
    so that an ablation stored before such a key existed goes on), the variants, the mode and the metric."""
    baseline = planned[0][1]
    variants = [{"name": v.name, "changes": v.changes, "applied": v.applied} for v, _ in planned]
    claimed = json.loads(json.dumps({"variants": variants, "mode": config.ablation.mode,
                                     "metric_setting": config.ablation.metric, "config_toml": to_toml(baseline)}))
    attrs = study.user_attrs
    if attrs.get("fingerprint") is not None:  # claimed before
        if any(attrs.get(key) != value for key, value in claimed.items()):
            raise ConfigError("the output already holds a different ablation (another baseline, variants, mode or "
                              "metric); choose another --out or --storage, or restore the experiment file")
    else:
        fingerprint = hashlib.sha256(json.dumps(claimed, sort_keys=True).encode()).hexdigest()
        for key, value in {"dltune": "ablation", "fingerprint": fingerprint, **claimed}.items():
            study.set_user_attr(key, value)
    study.set_user_attr("seeds", sorted(set(attrs.get("seeds", [])) | set(seeds)))


def _recorded(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials of finished pairs: completed, or failed because training diverged (a result, not a crash)."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
    return [t for t in trials if t.state == TrialState.COMPLETE or t.user_attrs.get("status") == "diverged"]


def _fail_stale(study: optuna.Study) -> None:
    """Trials left RUNNING by a killed ablation of an earlier dltune (which stored a pair as running while it
    trained) are failed, so that their pairs run again."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)


def _record(study: optuna.Study, variant: Variant, seed: int, started: tuple[datetime, dict[str, Any]], out: Path,
            config: ExperimentConfig, on_result: OnResult | None, finished: int, total: int) -> None:
    """Store a finished pair as one trial, written at once (one transaction, not one per attribute): its variant,
    seed, run record, metric, and val.loss per epoch as the dashboard's intermediate values. A pair that is
    training has no trial yet: a killed ablation leaves nothing to clean up, and the pair runs again on resume."""
    start, result = started
    metric = study.user_attrs.get("metric")
    if metric is None:
        metric = _resolve_metric(config.ablation.metric, result["test"], result["data"]["task"])
        study.set_user_attr("metric", metric)
        study.set_user_attr("higher_is_better",
                            higher_is_better(metric, extra_metrics(config.metrics.extra, config.code.paths)))
        study.set_user_attr("environment", result["environment"])
    value = result["test"].get(metric.split(".", 1)[1]) if result["status"] != "diverged" else None
    attrs = {"variant": variant.name, "seed": seed, "changes": variant.applied, **run_attrs(result, out),
             "metric": value}
    epochs = {record["epoch"]: (record.get("val") or {}).get("loss") for record in result["epochs"]}
    ok = value is not None and math.isfinite(value)
    trial = optuna.trial.create_trial(state=TrialState.COMPLETE if ok else TrialState.FAIL, value=value if ok else None,
                                      user_attrs=attrs, intermediate_values={
                                          e: v for e, v in epochs.items() if v is not None and math.isfinite(v)})
    trial.datetime_start = start
    study.add_trial(trial)
    if on_result is not None:
        on_result(pair_result({**result, "variant": variant.name, "seed": seed, "metric": value}), finished, total)


def _resolve_metric(setting: str, test: dict[str, float], task: str) -> str:
    if setting == "auto":
        if set(test) == {"loss"}:  # a step of the user's own without model.predict reports its loss alone
            return "test.loss"
        return "test.r2" if task == "regression" else "test.accuracy"
    split, _, name = setting.partition(".")
    if split != "test" or name not in test:
        raise ConfigError(f"ablation.metric: {setting!r} is not a test metric of this task; "
                          f"known: {', '.join('test.' + k for k in test)}")
    return setting


def _batches(config: ExperimentConfig) -> float:
    """A run's length in batches, relative to other runs on the same data: epochs / batch size."""
    return config.train.epochs / config.batch.size


def _pair_config(config: ExperimentConfig, seed: int, threads: int | None) -> dict[str, Any]:
    changes: dict[str, Any] = {"train.seed": seed}
    if threads is not None:
        changes["parallel.threads"] = min(threads, config.parallel.threads or threads)
    return override(config, changes).model_dump(mode="json")


def _run_dir(out: Path, variant: str, seed: int) -> Path:
    return out / "runs" / variant / f"seed-{seed}"


def _tracked_as(study: str, variant: Variant, seed: int, out: Path) -> Run:
    """A pair as trackers log it: one experiment per ablation, a run per (variant, seed), tagged with both."""
    return Run(study, f"{variant.name}-seed-{seed}", {"dltune": "ablation", "variant": variant.name, "seed": str(seed)},
               folder=out)


def _run_pair(worker: Worker, config: dict[str, Any], run_dir: str, track: Run | None = None
              ) -> tuple[datetime, dict[str, Any]]:
    """Train one pair (in this process or a pool's worker, on its cached data) into a fresh run folder; when it
    started, and its JSON-ready result."""
    start = datetime.now()
    if os.path.isdir(run_dir):
        shutil.rmtree(run_dir)  # left by an attempt that was never recorded
    experiment = ExperimentConfig.model_validate(config)
    result = train(experiment, out_dir=run_dir, model=worker.model, data=worker.cache.splits(experiment), track=track)
    return start, result.record()


def _flatten(raw: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"schedule": {"name": "x"}} and {"schedule.name": "x"} both give {"schedule.name": "x"}; an empty table is a
    value ({"loss.args": {}} clears the loss's arguments)."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat
