"""Your own training step over your own batches (model.step, model.predict, DataLoaders): the known answer (a plain
step on an (x, y) model gives the built-in step's history, bit for bit), examples/own_step/ through every command,
DDP's DistributedSampler, and the techniques that refuse a step of the user's with the key named."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dltune import ablate, train, tune
from dltune.data import batch_length, to_device
from dltune.errors import ConfigError, DltuneError
from dltune.experiment.config import ExperimentConfig, load_config, override
from dltune.run.assembly import batcher, splits_for
from dltune.run.runtime import device_for

from conftest import ROOT, run_cli

CARS = ROOT / "examples" / "own_step" / "own_step.toml"
PLAIN = '''
import torch.nn.functional as F


def step(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def predict(model, batch):
    x, y = batch
    return model(x), y


def vector(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")
'''
DIGITS = {"data.name": "digits", "model.hidden": [64], "model.dropout": 0.2, "train.epochs": 3}
TECHNIQUES = {  # what acts on parameters, gradients and the lr: each works on a step of the user's as on the built-in
    "plain": {},
    "regularized": {"regularization.clip_norm": 0.5, "regularization.l1": 1e-5, "regularization.l2": 1e-4,
                    "regularization.decoupled_weight_decay": 0.01, "batch.accumulate": 2, "schedule.name": "cosine",
                    "schedule.warmup_epochs": 1, "regularization.early_stopping": 1, "train.epochs": 4},
}


@pytest.fixture
def plain_code(tmp_path: Path) -> Path:
    (tmp_path / "plain_steps.py").write_text(textwrap.dedent(PLAIN))
    return tmp_path


def _config(code: Path, **extra: object) -> ExperimentConfig:
    return override(ExperimentConfig(), {**DIGITS, "code.paths": [str(code)], **extra})


def _history(result) -> list[dict]:
    return [{k: v for k, v in r.items() if "second" not in k} for r in result.epochs]  # timings apart


@pytest.mark.parametrize("techniques", TECHNIQUES)
def test_a_plain_step_gives_the_built_in_history_bit_for_bit(plain_code: Path, techniques: str) -> None:
    built_in = train(_config(plain_code, **TECHNIQUES[techniques]))
    own = train(_config(plain_code, **TECHNIQUES[techniques], **{"model.step": "plain_steps:step",
                                                                 "model.predict": "plain_steps:predict"}))
    assert _history(own) == _history(built_in)  # every loss, metric, lr and penalty: == on floats, not approx
    assert own.test == built_in.test and own.status == built_in.status and own.best_epoch == built_in.best_epoch
    for (name, a), b in zip(built_in.model.state_dict().items(), own.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    if techniques == "regularized":
        assert {"penalty", "grad_norm"} <= set(own.epochs[0]["train"])


def test_without_predict_val_and_test_report_the_steps_loss(plain_code: Path) -> None:
    built_in = train(_config(plain_code))
    own = train(_config(plain_code, **{"model.step": "plain_steps:step"}))
    assert [r["train"] for r in own.epochs] == [r["train"] for r in built_in.epochs]
    for mine, theirs in zip(own.epochs, built_in.epochs, strict=True):
        assert set(mine["val"]) == {"loss"}  # no predict: nothing for the metrics to read
        assert mine["val"]["loss"] == pytest.approx(theirs["val"]["loss"], rel=1e-5)  # summed per batch
    assert set(own.test) == {"loss"} and own.test["loss"] == pytest.approx(built_in.test["loss"], rel=1e-5)


def test_dataloaders_from_python_train_with_the_users_step(plain_code: Path) -> None:
    draws = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 8, generator=draws), torch.randint(0, 3, (300,), generator=draws)
    x[:, 0] += 3.0 * y  # three classes apart along the first feature
    loaders = tuple(DataLoader(TensorDataset(x[a:b], y[a:b]), batch_size=50) for a, b in ((0, 200), (200, 250),
                                                                                          (250, 300)))
    config = _config(plain_code, **{"model.step": "plain_steps:step", "model.predict": "plain_steps:predict",
                                    "data.task": "classification", "model.name": "plain_model:build",
                                    "batch.size": 20, "train.epochs": 4})
    (plain_code / "plain_model.py").write_text(
        "from torch import nn\n\ndef build(width=16):\n"
        "    return nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 3))\n")
    result = train(config, data=loaders)
    assert result.status == "completed" and result.data["sizes"] == {"train": 200, "val": 50, "test": 50}
    assert set(result.test) == {"loss", "accuracy", "macro_f1"} and result.test["accuracy"] > 0.5
    assert all(r["batch_size"] == 20 for r in result.epochs)  # batch.size, not the loader's 50
    # one DataLoader: its dataset cut by the [data] fractions
    whole = DataLoader(TensorDataset(x, y), batch_size=50)
    splits = splits_for(override(config, {"data.test_fraction": 0.2, "data.val_fraction": 0.25}), whole)
    assert [len(p.dataset) for p in (splits.train, splits.val, splits.test)] == [180, 60, 60]


def test_ddp_ranks_read_disjoint_shares_through_a_distributed_sampler() -> None:
    config = load_config(CARS, ["batch.size=32"])
    splits = splits_for(config)
    cpu = torch.device("cpu")
    n = len(splits.train.dataset)
    for epoch in range(2):
        seen = []
        shards = [batcher(splits, config, cpu, shard=(rank, 2)) for rank in (0, 1)]
        for batches in shards:
            for _ in range(epoch):  # each call is an epoch: the sampler's shuffle follows it
                list(batches(32))
            got = list(batches(32))
            assert all(batch_length(b) <= 16 for b in got) and batch_length(got[0]) == 16
            seen.append(torch.cat([b["mpg"] for b in got]))
        assert len(seen[0]) == len(seen[1]) == (n + 1) // 2  # padded to equal shares
        both = torch.cat(seen)
        assert set(both.tolist()) == set(splits.train.dataset.mpg.tolist())  # together: the whole split
    with pytest.raises(ConfigError, match=r"batch\.size: 33 does not divide by the 2 processes"):
        train(override(config, {"batch.size": 33, "parallel.strategy": "ddp", "parallel.nproc": 2}))


def test_batches_are_counted_and_moved_whatever_their_form() -> None:
    batch = {"a": [torch.zeros(5, 2), torch.ones(5)], "b": torch.zeros(5, dtype=torch.long)}
    assert batch_length(batch) == 5 and batch_length((torch.zeros(3, 4), "text")) == 3
    moved = to_device(batch, torch.device("cpu"))
    assert isinstance(moved, dict) and isinstance(moved["a"], list) and torch.equal(moved["a"][1], batch["a"][1])
    with pytest.raises(DltuneError, match="holds no tensor"):
        batch_length({"text": ["a", "b"]})


@pytest.mark.parametrize(("settings", "message"), [
    ({"regularization.augment": ["shift"]}, r"regularization\.augment: works on \(x, y\) batches"),
    ({"parallel.strategy": "pipeline", "parallel.stages": 2}, r"parallel\.strategy: works on \(x, y\) batches"),
    ({"loss.distill_from": "runs/teacher"}, r"loss\.distill_from: works on \(x, y\) batches"),
    ({"model.step": None}, r"model\.predict: your evaluation goes with a training step of your own"),
    ({"model.step": "plain_steps:missing"}, r"model\.step = 'plain_steps:missing': .* has no attribute 'missing'"),
    ({"model.step": "plain_steps:vector"}, r"model\.step = 'plain_steps:vector': returned \[\d+\]; a step returns "
                                           r"the batch's mean loss"),
])
def test_what_cannot_reach_into_a_users_step_is_refused_by_its_key(plain_code: Path, settings: dict,
                                                                   message: str) -> None:
    config = _config(plain_code, **{"model.step": "plain_steps:step", "model.predict": "plain_steps:predict",
                                    **settings})
    with pytest.raises(DltuneError, match=message):
        train(config)


def test_dataloaders_with_predict_need_the_task_and_a_factory_of_the_users(plain_code: Path) -> None:
    loaders = tuple(DataLoader(TensorDataset(torch.randn(20, 8), torch.randint(0, 3, (20,))), batch_size=5)
                    for _ in range(3))
    config = _config(plain_code, **{"model.step": "plain_steps:step", "model.predict": "plain_steps:predict"})
    with pytest.raises(ConfigError, match=r"data\.task: set it \(classification, binary or regression\)"):
        train(config, data=loaders)
    with pytest.raises(ConfigError, match=r"model\.name: mlp learns its sizes from \(x, y\) examples"):
        train(override(config, {"data.task": "classification"}), data=loaders)


def test_train_device_takes_cuda_n_and_mps_where_torch_has_them() -> None:
    for device in ("cuda:1", "mps", "cpu", "cuda"):
        assert override(ExperimentConfig(), {"train.device": device}).train.device == device
    with pytest.raises(ConfigError, match=r"train\.device"):
        override(ExperimentConfig(), {"train.device": "gpu"})
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"train\.device: cuda:1 was asked for, but torch sees no CUDA"):
            device_for("cuda:1")
    elif torch.cuda.device_count() < 8:
        with pytest.raises(ConfigError, match=r"train\.device: cuda:7 was asked for, but torch sees \d CUDA"):
            device_for("cuda:7")
    if not torch.backends.mps.is_available():
        with pytest.raises(ConfigError, match=r"train\.device: mps was asked for"):
            device_for("mps")


# --- examples/own_step/ through the CLI and from Python -------------------------------------------------------

QUICK = ["--set", "train.epochs=3"]


@pytest.mark.slow
def test_own_step_example_trains_ablates_tunes_and_lr_finds_from_the_cli(tmp_path: Path) -> None:
    r = run_cli("train", str(CARS), *QUICK, "--out", str(tmp_path / "run"), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc["test"]) == {"loss", "mse", "mae", "r2"} and doc["test"]["r2"] > 0.5
    assert doc["data"]["sizes"] == {"train": 274, "val": 59, "test": 59}
    r = run_cli("ablate", str(CARS), *QUICK, "--seeds", "2", "--out", str(tmp_path / "ablation"), "--json")
    assert r.returncode == 0, r.stderr
    assert {row["variant"] for row in json.loads(r.stdout)} == {"baseline", "cosine", "weight-decay", "clip"}
    r = run_cli("tune", str(CARS), *QUICK, "--trials", "3", "--out", str(tmp_path / "search"), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["trials"]["complete"] >= 1 and doc["best"][0]["values"][0] > 0
    r = run_cli("lr-find", str(CARS), "--json", "--steps", "30")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["use"] > 0 and len(json.loads(r.stdout)["losses"]) > 1


@pytest.mark.slow
def test_own_step_example_runs_under_two_ddp_processes(tmp_path: Path) -> None:
    r = run_cli("train", str(CARS), *QUICK, "--nproc", "2", "--out", str(tmp_path / "ddp"), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["environment"]["processes"] == 2 and doc["status"] == "completed" and doc["test"]["r2"] > 0.5


@pytest.mark.slow
def test_plain_step_under_ddp_gives_the_built_in_ddp_history(plain_code: Path, tmp_path: Path) -> None:
    base = {**DIGITS, "code.paths": [str(plain_code)], "train.epochs": 2, "parallel.strategy": "ddp",
            "parallel.nproc": 2}
    histories = []
    for own in (False, True):
        step = {"model.step": "plain_steps:step", "model.predict": "plain_steps:predict"} if own else {}
        histories.append(_history(train(override(ExperimentConfig(), {**base, **step}))))
    assert histories[0] == histories[1]


def test_own_step_example_from_python(tmp_path: Path) -> None:
    config = load_config(CARS, ["train.epochs=2"])
    result = train(config)
    assert result.status == "completed" and result.test["r2"] > 0.3
    ablation = ablate(override(config, {"ablation.seeds": 1}), out_dir=tmp_path / "ablation")
    assert [v.name for v in ablation.variants] == ["baseline", "cosine", "weight-decay", "clip"]
    assert len(ablation.results) == 4 and all(r.status == "completed" for r in ablation.results)
    search = tune(override(config, {"search.trials": 2}), out_dir=tmp_path / "search")
    assert len(search.trials) == 2 and len(search.best) == 1


def test_a_paused_run_of_the_users_dataloaders_goes_on_exactly(tmp_path: Path) -> None:
    from dltune.run.checkpoints import Paused

    config = load_config(CARS, ["train.epochs=4", "model.args.dropout=0.2"])  # dropout: the random state too
    whole = train(config, out_dir=tmp_path / "whole")
    with pytest.raises(Paused):
        train(config, on_epoch=lambda e, r: "pause" if e == 2 else None, out_dir=tmp_path / "part")
    resumed = train(config, out_dir=tmp_path / "part", resume=True)
    assert _history(resumed) == _history(whole) and resumed.test == whole.test
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_without_predict_a_search_and_an_ablation_read_the_steps_loss(tmp_path: Path) -> None:
    config = override(load_config(CARS, ["train.epochs=2", "search.trials=2", "ablation.seeds=1"]),
                      {"model.predict": None, "ablation.metric": "auto",
                       "ablation.variants": {"clip": {"regularization.clip_norm": 1.0}}})
    with pytest.raises(ConfigError, match=r"search\.objectives: val\.r2 is not reported by a step of your own "
                                          r"without model\.predict"):
        tune(config, out_dir=tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    with pytest.raises(ConfigError, match=r"search\.objectives: latency feeds \(x, y\) examples to the model"):
        tune(override(config, {"search.objectives": ["val.loss", "latency"]}), out_dir=tmp_path / "latency")
    search = tune(override(config, {"search.objectives": ["val.loss"]}), out_dir=tmp_path / "search")
    assert search.directions == ["minimize"] and any(t.values for t in search.trials)
    ablation = ablate(config, out_dir=tmp_path / "ablation")
    assert ablation.metric == "test.loss" and not ablation.higher_is_better
    assert all(r.metric is not None and r.metric > 0 for r in ablation.results)
