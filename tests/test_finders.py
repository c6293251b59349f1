"""Finders: the lr suggestion on a problem whose good range is known, a planted memory limit, the throughput
rule, and state left exactly as it was."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from dltune.cli import main
from dltune.errors import ConfigError
from dltune.experiment.config import load_config
from dltune.data import load_data
from dltune.tuner.finders import batch_find, loader_find, lr_find, step_memory
from dltune.tuner.finders import _restored  # noqa: PLC2701 - the finders' own setup, to measure with it
from dltune.models import build_model

LOGISTIC = {"data": {"name": "breast-cancer"}, "model": {"hidden": []}, "optim": {"name": "sgd"},
            "batch": {"size": 64}}


def test_lr_suggestion_lies_in_the_stable_range_of_a_convex_problem() -> None:
    """Logistic regression (an MLP without hidden layers) with SGD: the loss's curvature is at most
    λ_max(XᵀX/n)/2, so a step is stable for lr < 2/L = 4/λ_max; a useful lr is within 2 decades below."""
    config = load_config(LOGISTIC)
    x = load_data(config.data).train[0].numpy().astype(np.float64)
    bound = 4 / np.linalg.eigvalsh(x.T @ x / len(x)).max()
    result = lr_find(config, min_lr=1e-5, max_lr=100.0, steps=100)
    assert result.confident and result.suggested is not None
    for rule in ("valley", "steepest"):
        assert bound / 100 <= result.suggestions[rule] <= bound, (rule, result.suggestions, bound)
    assert result.stopped_early  # the sweep ran into divergence and stopped there
    assert len(result.lrs) == len(result.losses) == len(result.smoothed) < 100


def test_lr_find_flags_a_curve_without_descent() -> None:
    result = lr_find(load_config(LOGISTIC), min_lr=1e-9, max_lr=1e-7, steps=30)
    assert not result.confident and result.suggested is None
    assert any(r.startswith("no descent") for r in result.reasons)


def test_finders_leave_the_callers_model_config_and_rng_unchanged() -> None:
    config = load_config({"data": {"name": "digits", "limit": 400}, "model": {"hidden": [32]}})
    dumped = config.model_dump()
    torch.manual_seed(123)
    model = build_model(config.model, (1, 8, 8), 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    lr_find(config, model=model, steps=20)
    batch_find(config, model=model, sizes=[16, 32], steps=2)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads
    assert config.model_dump() == dumped


def test_memory_mode_finds_a_planted_limit() -> None:
    config = load_config({"data": {"name": "digits"}, "model": {"hidden": [64]}})
    with _restored(config) as run:
        low, high = step_memory(run, run.model, config, 200), step_memory(run, run.model, config, 201)
    assert low < high
    result = batch_find(config, mode="memory", memory_budget=(low + high) // 2)
    assert result.chosen == 200
    assert all((used <= result.budget_bytes) == (b <= 200) for b, used in result.memory_bytes.items())


def test_throughput_mode_picks_the_smallest_batch_within_5_percent_of_the_best() -> None:
    result = batch_find(load_config({"data": {"name": "digits"}, "model": {"hidden": [64]}}),
                        sizes=[8, 32, 128, 512], steps=5)
    best = max(result.samples_per_second.values())
    assert result.samples_per_second[result.chosen] >= 0.95 * best
    assert all(result.samples_per_second[b] < 0.95 * best for b in result.sizes if b < result.chosen)


def test_couple_lr_rescales_for_the_chosen_batch() -> None:
    config = load_config({"data": {"name": "digits"}, "model": {"hidden": [16]}})
    linear = batch_find(config, sizes=[400], steps=2, couple_lr="linear")
    assert linear.chosen == 400 and linear.lr == pytest.approx(1e-3 * 4)
    root = batch_find(config, sizes=[400], steps=2, couple_lr="sqrt", rerun_lr=True)
    assert root.lr == pytest.approx(1e-3 * 2) and root.lr_find is not None


def test_loader_find_times_threads_and_workers() -> None:
    result = loader_find(load_config({"data": {"name": "digits", "limit": 300}, "model": {"hidden": [16]}}),
                         workers=[0, 1], threads=[1], repeats=1)
    paths = [(r["path"], r["workers"]) for r in result.rows]
    assert paths == [("in-memory", None), ("DataLoader", 0), ("DataLoader", 1)]
    assert result.best == min(result.rows, key=lambda r: r["epoch_seconds"])
    with pytest.raises(ConfigError, match="--repeats: at least 1"):  # no epoch timed: no median to recommend by
        loader_find(load_config({"data": {"name": "digits", "limit": 300}}), repeats=0)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "exp.toml"
    import tomli_w

    config.write_text(tomli_w.dumps(LOGISTIC))
    assert main(["lr-find", str(config), "--min-lr", "1e-5", "--max-lr", "100", "--plot", str(tmp_path / "lr.png"),
                 "--apply", str(tmp_path / "tuned.toml"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (tmp_path / "lr.png").read_bytes()[:4] == b"\x89PNG"
    assert tomllib.loads((tmp_path / "tuned.toml").read_text())["optim"]["lr"] == doc["suggested"]
    assert main(["batch-find", str(config), "--sizes", "16,64", "--plot", str(tmp_path / "b.png"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["chosen"] in (16, 64)
    assert main(["lr-find", str(config), "--min-lr", "1", "--max-lr", "0.1"]) == 2
    assert "need 0 < min_lr < max_lr" in capsys.readouterr().err
    assert main(["batch-find", str(config), "--mode", "memory"]) == 2
    assert "--memory-budget" in capsys.readouterr().err
