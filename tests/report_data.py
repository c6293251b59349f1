"""Hand-built ablations for the report tests: synthetic per-epoch histories shaped like train()'s, no training."""

from __future__ import annotations

import math
from typing import Any

from dltune.study.records import AblationData, PairResult, Variant

CONFIG_TOML = '[data]\nname = "mnist-5k"\n\n[optim]\nname = "adam"\nlr = 1e-3\n\n[train]\nepochs = 4\nseed = 1\n'
ENVIRONMENT = {"python": "3.11.7", "torch": "2.13.0+cpu", "cpu": "Intel(R) Xeon(R) Processor", "cores": 2,
               "torch_threads": 1, "loader_workers": 0, "git_revision": "0123abc+dirty"}


def history(final: float | None, *, epochs: int = 4, seed: int = 1, lr: float = 1e-3, batch: int = 100,
            lr_ranged: bool = False, regression: bool = False, with_val: bool = True) -> list[dict[str, Any]]:
    """Per-epoch records like train()'s: loss falling, the val metric rising to `final` (NaN when diverged)."""
    records = []
    for e in range(1, epochs + 1):
        frac = e / epochs
        loss = 1.5 * math.exp(-2 * frac) + 0.01 * seed if final is not None else (math.nan if e > 1 else 2.3)
        record: dict[str, Any] = {"epoch": e, "train": {"loss": loss}, "lr": lr * (0.8 ** (e - 1)),
                                  "batch_size": batch * (2 if e > epochs // 2 and batch > 100 else 1),
                                  "seconds": 0.05, "eval_seconds": 0.01, "samples_per_second": 50_000.0}
        if lr_ranged:
            record["lr_range"] = [record["lr"] * 0.8, record["lr"]]
        if with_val and final is not None:
            metric = {"mse": loss / 2, "mae": loss / 3, "r2": final * frac} if regression else \
                     {"accuracy": final - 0.1 * (1 - frac), "macro_f1": final - 0.11 * (1 - frac)}
            record["val"] = {"loss": loss * 1.1, **metric}
        records.append(record)
    return records


def ablation(values: dict[str, list[float | None]], *, metric: str = "test.accuracy", higher_is_better: bool = True,
             changes: dict[str, dict[str, Any]] | None = None, study: str = "synthetic", mode: str = "independent",
             regression: bool = False) -> AblationData:
    """An ablation whose variant `name` has one run per value (seeds 1, 2, ...); None is a diverged run."""
    changes = changes or {}
    variants, results = [], []
    for i, (name, metrics) in enumerate(values.items()):
        own = changes.get(name, {} if i == 0 else {"optim.lr": 0.001 * (i + 1)})
        variants.append(Variant(name, own, own))
        for seed, value in enumerate(metrics, start=1):
            key = metric.split(".", 1)[1]
            results.append(PairResult(
                variant=name, seed=seed, status="completed" if value is not None else "diverged", metric=value,
                test={key: value} if value is not None else {},
                epochs=history(value, seed=seed, lr_ranged=i % 2 == 1, batch=100 * (i + 1), regression=regression),
                train_seconds=1.0 + 0.1 * i + 0.01 * seed, samples_per_second=40_000.0 + 1000 * i,
                parameters=397_510, run_dir=None))
    seeds = list(range(1, max(len(v) for v in values.values()) + 1))
    return AblationData(study=study, metric=metric, higher_is_better=higher_is_better, mode=mode, seeds=seeds,
                        variants=variants, results=results, environment=dict(ENVIRONMENT), config_toml=CONFIG_TOML)


def classification() -> AblationData:
    """Baseline, a significantly better variant, a no-op variant (identical runs) and one with a diverged seed."""
    return ablation(
        {"baseline": [0.90, 0.91, 0.92], "exp-decay": [0.93, 0.95, 0.94], "workers-2": [0.90, 0.91, 0.92],
         "lr-0.1": [0.85, None, 0.80]},
        changes={"exp-decay": {"schedule.name": "exponential", "schedule.gamma": 0.9},
                 "workers-2": {"parallel.workers": 2}, "lr-0.1": {"optim.lr": 0.1}},
        study="seed-mnist <ablation> & co")
