"""The persistent worker pool of ablate --jobs: each worker loads a dataset once for many runs, results are those of
--jobs 1 per (variant, seed), and the user's own data reaches the workers once."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from dltune.experiment.config import ExperimentConfig, load_config
from dltune.study.ablate import ablate
from dltune.study.pool import DataCache, Pool, Worker

# one thread in every run: torch may split a kernel's work (and its float sums) by the thread count, which a
# pool does not choose; with the threads fixed, --jobs 1 and --jobs 2 must agree bit for bit
TINY = {"data": {"name": "digits", "limit": 400}, "model": {"hidden": [16]}, "train": {"epochs": 2},
        "parallel": {"threads": 1},
        "ablation": {"seeds": 2, "variants": {"lr-3e-3": {"optim.lr": 3e-3}, "batch-32": {"batch": {"size": 32}},
                                              "fewer": {"data.limit": 300}}}}


def _loads_after(worker: Worker, configs: list[dict]) -> tuple[int, int]:
    """In a worker: the splits of each config, then this process's id and its count of loads."""
    for config in configs:
        worker.cache.splits(ExperimentConfig.model_validate(config))
    return os.getpid(), worker.cache.loads


def test_a_worker_loads_each_dataset_once_for_many_runs() -> None:
    base = load_config(TINY)
    configs = [base.model_copy(update={"train": base.train.model_copy(update={"seed": s})}).model_dump(mode="json")
               for s in (1, 2, 3)]
    other = load_config({**TINY, "data": {"name": "digits", "limit": 300}}).model_dump(mode="json")
    with Pool(1) as pool:
        first = pool.submit(_loads_after, configs).result()
        again = pool.submit(_loads_after, configs + [other]).result()
    assert first[0] == again[0] != os.getpid()  # the same worker, started once, not this process
    assert (first[1], again[1]) == (1, 2)  # one load per distinct [data] section, however many runs


def test_cached_splits_are_those_of_a_fresh_load() -> None:
    config = load_config(TINY)
    cache = DataCache()
    once, twice = cache.splits(config), cache.splits(config)
    fresh = DataCache().splits(config)
    assert once is twice and cache.loads == 1
    for split in ("train", "val", "test"):
        for a, b in zip(getattr(once, split), getattr(fresh, split)):
            assert a.dtype == b.dtype and a.equal(b)


def _pairs(data) -> dict:
    """Each (variant, seed): test metrics and every epoch's train and val record, to compare bit for bit."""
    return {(r.variant, r.seed): (r.test, [(e["train"], e.get("val")) for e in r.epochs]) for r in data.results}


def test_jobs_2_gives_the_results_of_jobs_1_per_pair(tmp_path: Path) -> None:
    config = load_config(TINY)
    one = _pairs(ablate(config, out_dir=tmp_path / "one", jobs=1))
    two = _pairs(ablate(config, out_dir=tmp_path / "two", jobs=2))
    assert len(one) == 8 and one == two


def _digits(log: str) -> tuple[np.ndarray, np.ndarray]:
    """A loader of the user's own that notes the process it runs in."""
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    x, y = load_digits(return_X_y=True)
    return x[:300], y[:300]


def test_the_users_loader_runs_once_per_process(tmp_path: Path) -> None:
    log = tmp_path / "loads.log"
    config = load_config({k: v for k, v in TINY.items() if k != "data"} | {"ablation": {**TINY["ablation"],
                          "variants": {"lr-3e-3": {"optim.lr": 3e-3}}, "seeds": 3}})
    data = ablate(config, out_dir=tmp_path / "out", jobs=2, data=functools.partial(_digits, str(log)))
    assert len(data.results) == 6
    pids = log.read_text().split()
    assert pids.count(str(os.getpid())) == 1  # the preflight
    workers = [p for p in pids if p != str(os.getpid())]
    assert 1 <= len(workers) <= 2 and len(set(workers)) == len(workers)  # at most once in each worker
