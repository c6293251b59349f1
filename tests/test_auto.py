"""Settings found before training (train.auto, dltune train --auto) and torch.compile of the training steps."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import pytest
import torch

from dltune import train
from dltune.experiment.config import load_config, override
from dltune.run.loop import fit as train_as_set

from conftest import ROOT, run_cli, run_main

QUICK = {"data": {"limit": 1000}, "model": {"hidden": [64]}, "train": {"epochs": 2}}
SEED = ROOT / "examples" / "seed_mnist.toml"
SMALL = ["--set", "data.limit=1000", "--set", "train.epochs=2", "--set", "ablation.variants={}"]


def _history(result) -> list[dict]:
    timing = {"seconds", "eval_seconds", "samples_per_second"}
    return [{k: v for k, v in r.items() if k not in timing} for r in result.epochs]


def test_auto_records_its_choices_and_the_run_folder_trains_the_same_run_without_finders(tmp_path: Path) -> None:
    r = run_cli("train", str(SEED), *SMALL, "--auto", "lr,batch", "--set", 'schedule.name="onecycle"',
                "--out", str(tmp_path / "run"), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    auto = doc["auto"]
    assert set(auto) == {"batch", "lr", "seconds"} and auto["seconds"] >= auto["batch"]["seconds"] + auto["lr"]["seconds"]
    assert auto["batch"]["before"] == 100 and str(auto["batch"]["chosen"]) in auto["batch"]["samples_per_second"]
    # the lr is found at the chosen batch; the run's lr, rescaled for it, is lr-find's fallback where it is not confident
    assert auto["batch"]["lr_coupling"] == "sqrt"
    assert math.isclose(auto["lr"]["before"], 1e-3 * math.sqrt(auto["batch"]["chosen"] / 100))
    assert set(auto["lr"]["suggestions"]) and auto["lr"]["why"]
    assert auto["lr"]["chosen"] == (auto["lr"]["suggested"] if auto["lr"]["confident"] else auto["lr"]["before"])
    config = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    assert config["train"]["auto"] == [] and config["batch"]["size"] == auto["batch"]["chosen"]
    assert config["optim"]["lr"] == auto["lr"]["chosen"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["auto"] == auto  # the run folder records what was chosen and why
    # one-cycle: the found lr is the cycle's peak (it starts at peak / div_factor, and never passes the peak)
    chosen, div = auto["lr"]["chosen"], config["schedule"]["div_factor"]
    assert math.isclose(doc["epochs"][0]["lr"], chosen / div, rel_tol=1e-6)
    assert max(e["lr_range"][1] for e in doc["epochs"]) <= chosen * (1 + 1e-9)
    again = run_cli("train", str(tmp_path / "run" / "config.toml"), "--out", str(tmp_path / "again"), "--json")
    assert again.returncode == 0, again.stderr
    redo = json.loads(again.stdout)
    assert redo["auto"] is None and redo["test"] == doc["test"]  # same run, no finders


def test_auto_batch_alone_rescales_the_lr_as_batch_find_does() -> None:
    config = load_config({**QUICK, "train": {**QUICK["train"], "auto": ["batch"]}})
    result = train(config)
    found = result.auto["batch"]
    assert found["lr_coupling"] == "sqrt"  # Adam: by the square root of the batch ratio
    assert math.isclose(result.config.optim.lr, 1e-3 * math.sqrt(found["chosen"] / 100))
    assert result.config.batch.size == found["chosen"] and "lr" not in result.auto
    # the finders leave torch's random state alone: the same run as one given those settings directly
    direct = train_as_set(override(config, {"train.auto": [], "batch.size": found["chosen"],
                                            "optim.lr": result.config.optim.lr}))
    assert _history(direct) == _history(result) and direct.test == result.test


@pytest.mark.parametrize(("args", "message"), [
    (["--auto", "lr,speed"], "argument --auto: expected lr, batch or lr,batch; got 'lr,speed'"),
    (["--set", 'train.auto=["momentum"]'], "train.auto"),
])
def test_a_bad_auto_is_a_clear_error(args: list[str], message: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    r = run_main(capsys, "train", str(SEED), *SMALL, *args, "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


def test_a_search_or_a_variant_that_sets_what_auto_finds_is_refused(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    r = run_main(capsys, "tune", str(ROOT / "examples" / "tune_mnist.toml"), "--set", 'train.auto=["lr"]',
                 "--out", str(tmp_path / "search"))
    assert r.returncode == 2 and "search.space.optim.lr: train.auto finds it ('lr')" in r.stderr, r.stderr
    assert not (tmp_path / "search").exists()
    r = run_main(capsys, "ablate", str(SEED), "--set", 'train.auto=["batch"]', "--set",
                 'ablation.variants={big = {"batch.size" = 512}}', "--out", str(tmp_path / "ablation"))
    assert r.returncode == 2 and "ablation.variants.big: batch.size: train.auto finds it" in r.stderr, r.stderr
    assert not (tmp_path / "ablation").exists()


class _SmallBatchesOnly(torch.nn.Module):
    """A model that fails on batches over 64 examples: the batch finder tries larger ones."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > 64:
            raise RuntimeError("out of memory, say")
        return self.fc(x.flatten(1))


def test_finders_that_fail_leave_no_run_folder(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()  # as dltune train claims it before the finders run
    config = load_config({**QUICK, "train": {**QUICK["train"], "auto": ["batch"]}})
    with pytest.raises(RuntimeError, match="out of memory"):
        train(config, model=_SmallBatchesOnly(), out_dir=run_dir)
    assert not run_dir.exists()


@pytest.mark.slow
def test_compile_on_and_off_give_the_same_history_and_time_compiling_apart() -> None:
    config = load_config({"data": {"limit": 600}, "model": {"hidden": [32], "dropout": 0.1},
                          "train": {"epochs": 2}})
    eager = train(config)
    compiled = train(override(config, {"train.compile": True}))
    assert eager.compile_seconds == 0 and compiled.compile_seconds > 0
    for a, b in zip(eager.epochs, compiled.epochs):
        assert math.isclose(a["train"]["loss"], b["train"]["loss"], rel_tol=1e-4)
        assert math.isclose(a["val"]["loss"], b["val"]["loss"], rel_tol=1e-4)
    assert abs(eager.test["accuracy"] - compiled.test["accuracy"]) <= 0.002
    # the saved model is the module itself, not torch's compiled wrapper
    assert set(compiled.model.state_dict()) == set(eager.model.state_dict())


def test_an_lr_range_test_that_is_not_confident_keeps_the_files_lr(monkeypatch: pytest.MonkeyPatch) -> None:
    # the decision alone (the range test itself is tested in test_finders): a doubtful suggestion is not used
    import dltune.tuner.auto
    from dltune.tuner.finders import LRFindResult

    doubtful = LRFindResult([1e-4, 1e-2], [2.3, 2.2], [2.3, 2.2], {"min/10": 1e-3}, 3e-2, 0.0, False,
                            ["the loss never blew up in the sweep"], False, "min/10")
    monkeypatch.setattr(dltune.tuner.auto, "lr_find", lambda *a, **k: doubtful)
    config = load_config({**QUICK, "optim": {"lr": 2e-3}, "train": {**QUICK["train"], "auto": ["lr"]}})
    chosen, found = dltune.tuner.auto.find_settings(config)
    assert chosen.optim.lr == 2e-3 and found["lr"]["chosen"] == 2e-3 and found["lr"]["suggested"] == 3e-2
    assert "not confident (the loss never blew up in the sweep): optim.lr kept" in found["lr"]["why"]
    assert chosen.train.auto == ()


def test_the_experiment_is_checked_once_with_or_without_train_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    """dltune.train checks the experiment, finds the settings of train.auto, then calls the loop, which does not
    check again (the loop's entry, run.loop.fit, takes a checked experiment)."""
    import dltune.run.loop
    import dltune.tuner.auto

    checked: list[tuple[str, ...]] = []
    check = dltune.tuner.auto.check
    monkeypatch.setattr(dltune.tuner.auto, "check", lambda c, **kw: (checked.append(c.train.auto), check(c, **kw)))
    for auto in ([], ["lr"]):
        checked.clear()
        result = train(load_config({**QUICK, "data": {"name": "digits", "limit": 300}, "train": {"epochs": 1,
                                                                                                   "auto": auto}}))
        assert result.status == "completed" and checked == [tuple(auto)]
    assert not hasattr(dltune.run.loop, "check")
