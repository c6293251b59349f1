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
import multiprocessing
import os
import shutil
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from dltune.config import AblationConfig, ExperimentConfig, SearchConfig, load_config, override, to_toml
from dltune.errors import ConfigError, mask_password
from dltune.metrics import higher_is_better
from dltune.records import AblationData, PairResult, Variant
from dltune.results import ensure_writable
from dltune.search_engines import guard
from dltune.train import check, train

__all__ = ["ablate", "load_ablation", "open_study", "plan"]

STUDY = "ablation"
BASELINE = "baseline"
OnResult = Callable[[PairResult, int, int], None]  # (result, done so far, total)


def plan(config: ExperimentConfig) -> list[tuple[Variant, ExperimentConfig]]:
    """The baseline and every variant with its resolved config; a bad variant fails here, before any
    training, with an error that names the variant and the path."""
    baseline = config.model_copy(update={"ablation": AblationConfig(), "search": SearchConfig()})
    check(baseline)
    planned = [(Variant(BASELINE, {}, {}), baseline)]
    applied: dict[str, Any] = {}
    for name, raw in config.ablation.variants.items():
        changes = _flatten(raw)
        if name == BASELINE:
            raise ConfigError(f"ablation.variants.{name}: the name {BASELINE!r} is taken by the baseline")
        if not changes:
            raise ConfigError(f"ablation.variants.{name}: changes nothing; give dotted paths, e.g. "
                              '{ "optim.lr" = 3e-3 }')
        bad = [path for path in changes if path.split(".")[0] == "ablation"]
        if bad:
            raise ConfigError(f"ablation.variants.{name}: {bad[0]}: a variant cannot change the ablation itself")
        applied = {**applied, **changes} if config.ablation.mode == "cumulative" else changes
        try:
            variant_config = override(baseline, applied)
            check(variant_config)
        except ConfigError as e:
            raise ConfigError(f"ablation.variants.{name}: {e}") from None
        planned.append((Variant(name, changes, dict(applied)), variant_config))
    return planned


def ablate(
    config: ExperimentConfig | str | Path,
    *,
    out_dir: str | Path,
    seeds: int | None = None,
    jobs: int = 1,
    storage: str | None = None,
    name: str = STUDY,
    on_result: OnResult | None = None,
) -> AblationData:
    """Run every (variant, seed) pair not yet recorded in the storage, then read the whole ablation back.

    `jobs` > 1 runs pairs in that many processes with torch threads divided so that
    jobs × threads <= cores. The storage defaults to SQLite in `out_dir` (study.db); `name` is the
    Optuna study's name in it (several ablations can share one database under different names).
    """
    if not isinstance(config, ExperimentConfig):
        config = load_config(config)
    n_seeds = seeds if seeds is not None else config.ablation.seeds
    if n_seeds < 1:
        raise ConfigError(f"--seeds: must be at least 1, got {n_seeds}")
    if jobs < 1:
        raise ConfigError(f"--jobs: must be at least 1, got {jobs}")
    planned = plan(config)
    out = Path(out_dir)
    ensure_writable(out)
    study = open_study(storage or default_storage(out), name, create=True)
    seed_list = [config.train.seed + k for k in range(n_seeds)]
    _claim(study, config, planned, seed_list)
    _fail_stale(study)

    done = {(t.user_attrs["variant"], t.user_attrs["seed"]) for t in _recorded(study)}
    todo = [(v, c, s) for v, c in planned for s in seed_list if (v.name, s) not in done]
    total, finished = len(planned) * len(seed_list), len(planned) * len(seed_list) - len(todo)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pending: dict[int, optuna.trial.Trial] = {}
    try:
        if jobs == 1:
            for variant, cfg, seed in todo:
                trial = _ask(study, variant, seed)
                pending[trial.number] = trial
                result = _run_pair(_pair_config(cfg, seed, None), str(_run_dir(out, variant.name, seed)))
                finished += 1
                _tell(study, pending.pop(trial.number), variant, seed, result, config, on_result, finished, total)
        else:
            # Forking a process that holds torch's thread pools can deadlock; a fork server started
            # fresh, with dltune imported once, hands out clean workers without a torch import each.
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["dltune.train"])
            with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
                futures: dict[Future, tuple[Variant, int, int]] = {}
                for variant, cfg, seed in todo:
                    trial = _ask(study, variant, seed)
                    pending[trial.number] = trial
                    pair = _pair_config(cfg, seed, threads)
                    futures[pool.submit(_run_pair, pair, str(_run_dir(out, variant.name, seed)))] = (
                        variant, seed, trial.number)
                for future in as_completed(futures):
                    variant, seed, number = futures[future]
                    finished += 1
                    _tell(study, pending.pop(number), variant, seed, future.result(), config, on_result,
                          finished, total)
    finally:
        for trial in pending.values():  # interrupted or crashed: run again on resume
            study.tell(trial, state=TrialState.FAIL)
    return load_ablation(storage or default_storage(out), name)


def default_storage(out_dir: str | Path) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / 'study.db'}"


def open_study(storage: str, name: str | None = None, *, create: bool = False) -> optuna.Study:
    """The ablation study `name` in `storage` (None: the only ablation there); a storage that cannot be
    reached is a clear error, with any password masked."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if create:
        return guard(storage, lambda: optuna.create_study(storage=storage, study_name=name or STUDY,
                                                          direction="maximize", load_if_exists=True))
    summaries = guard(storage, lambda: optuna.get_all_study_summaries(storage))
    names = [s.study_name for s in summaries if s.user_attrs.get("dltune") == "ablation"]
    if name is None and len(names) != 1:
        found = f"ablations {', '.join(names)}; choose one with --study" if names else "no ablation"
        raise ConfigError(f"{mask_password(storage)}: holds {found}")
    if name is not None and name not in {s.study_name for s in summaries}:
        raise ConfigError(f"{mask_password(storage)}: holds no ablation named {name!r}")
    return guard(storage, lambda: optuna.load_study(storage=storage, study_name=name or names[0]))


def load_ablation(storage: str, name: str | None = None) -> AblationData:
    """The whole ablation, read back from the storage alone."""
    study = open_study(storage, name)
    attrs = study.user_attrs
    if attrs.get("dltune") != "ablation":
        raise ConfigError(f"{mask_password(storage)}: the study {study.study_name!r} is not a dltune ablation")
    variants = [Variant(v["name"], v["changes"], v["applied"]) for v in attrs["variants"]]
    results = [_pair_result(t.user_attrs) for t in _recorded(study)]
    metric = attrs.get("metric") or "test.accuracy"
    return AblationData(
        study=study.study_name, metric=metric, higher_is_better=higher_is_better(metric),
        mode=attrs["mode"], seeds=sorted({r.seed for r in results} | set(attrs.get("seeds", []))),
        variants=variants, results=results, environment=attrs.get("environment", {}),
        config_toml=attrs.get("config_toml", ""),
    )


def _claim(study: optuna.Study, config: ExperimentConfig, planned: list[tuple[Variant, ExperimentConfig]],
           seeds: list[int]) -> None:
    """Write what this ablation is into the study, or check that the study holds this same ablation."""
    baseline = planned[0][1]
    variants = [{"name": v.name, "changes": v.changes, "applied": v.applied} for v, _ in planned]
    fingerprint = hashlib.sha256(json.dumps(
        [baseline.model_dump(mode="json"), variants, config.ablation.mode, config.ablation.metric],
        sort_keys=True).encode()).hexdigest()
    attrs = study.user_attrs
    if attrs.get("fingerprint") not in (None, fingerprint):
        raise ConfigError("the output already holds a different ablation (another baseline, variants, mode or "
                          "metric); choose another --out or --storage, or restore the experiment file")
    if attrs.get("fingerprint") is None:
        for key, value in {"dltune": "ablation", "fingerprint": fingerprint, "variants": variants,
                           "mode": config.ablation.mode, "metric_setting": config.ablation.metric,
                           "config_toml": to_toml(baseline)}.items():
            study.set_user_attr(key, value)
    study.set_user_attr("seeds", sorted(set(attrs.get("seeds", [])) | set(seeds)))


def _recorded(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials of finished pairs: completed, or failed because training diverged (a result, not a crash)."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
    return [t for t in trials if t.state == TrialState.COMPLETE or t.user_attrs.get("status") == "diverged"]


def _fail_stale(study: optuna.Study) -> None:
    """Trials left RUNNING by a killed ablation are failed, so that their pairs run again."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)


def _ask(study: optuna.Study, variant: Variant, seed: int) -> optuna.trial.Trial:
    trial = study.ask()
    trial.set_user_attr("variant", variant.name)
    trial.set_user_attr("seed", seed)
    trial.set_user_attr("changes", variant.applied)
    return trial


def _tell(study: optuna.Study, trial: optuna.trial.Trial, variant: Variant, seed: int, result: dict[str, Any],
          config: ExperimentConfig, on_result: OnResult | None, finished: int, total: int) -> None:
    metric = study.user_attrs.get("metric")
    if metric is None:
        metric = _resolve_metric(config.ablation.metric, result["test"], result["data"]["task"])
        study.set_user_attr("metric", metric)
        study.set_user_attr("environment", result["environment"])
    value = result["test"].get(metric.split(".", 1)[1]) if result["status"] != "diverged" else None
    for key in ("status", "test", "epochs", "train_seconds", "samples_per_second", "parameters", "run_dir"):
        trial.set_user_attr(key, result[key])
    trial.set_user_attr("metric", value)
    for record in result["epochs"]:
        val = (record.get("val") or {}).get("loss")
        if val is not None:
            trial.report(val, record["epoch"])  # val.loss per epoch: the dashboard's intermediate values
    if value is None or not math.isfinite(value):
        study.tell(trial, state=TrialState.FAIL)
    else:
        study.tell(trial, value)
    if on_result is not None:
        on_result(_pair_result({**result, "variant": variant.name, "seed": seed, "metric": value}), finished, total)


def _resolve_metric(setting: str, test: dict[str, float], task: str) -> str:
    if setting == "auto":
        return "test.r2" if task == "regression" else "test.accuracy"
    split, _, name = setting.partition(".")
    if split != "test" or name not in test:
        raise ConfigError(f"ablation.metric: {setting!r} is not a test metric of this task; "
                          f"known: {', '.join('test.' + k for k in test)}")
    return setting


def _pair_result(a: Mapping[str, Any]) -> PairResult:
    """A pair's record from its trial's attributes (or from the result they are written from)."""
    return PairResult(variant=a["variant"], seed=a["seed"], status=a["status"], metric=a.get("metric"),
                      test=a.get("test") or {}, epochs=a.get("epochs") or [], train_seconds=a["train_seconds"],
                      samples_per_second=a["samples_per_second"], parameters=a["parameters"],
                      run_dir=a.get("run_dir"))


def _pair_config(config: ExperimentConfig, seed: int, threads: int | None) -> dict[str, Any]:
    changes: dict[str, Any] = {"train.seed": seed}
    if threads is not None:
        changes["parallel.threads"] = min(threads, config.parallel.threads or threads)
    return override(config, changes).model_dump(mode="json")


def _run_dir(out: Path, variant: str, seed: int) -> Path:
    return out / "runs" / variant / f"seed-{seed}"


def _run_pair(config: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """Train one pair (in this process or a worker) into a fresh run folder; JSON-ready result."""
    if os.path.isdir(run_dir):
        shutil.rmtree(run_dir)  # left by an attempt that was never recorded
    result = train(ExperimentConfig.model_validate(config), out_dir=run_dir)
    return result.to_dict()


def _flatten(raw: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"schedule": {"name": "x"}} and {"schedule.name": "x"} both give {"schedule.name": "x"}."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat
