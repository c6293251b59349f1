from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset

from dltune.experiment.config import load_config
from dltune.errors import ConfigError
from dltune.models import MODELS
from dltune.techniques.optim import OPTIMIZERS
from dltune.run.assembly import batcher, setup
from dltune.run.runtime import torch_settings
from dltune import train

QUICK = {"data": {"limit": 1000}, "model": {"hidden": [64]}, "train": {"epochs": 2}}


def quick(**sections: dict) -> dict:
    return {k: {**QUICK.get(k, {}), **sections.get(k, {})} for k in {*QUICK, *sections}}


def _history(result) -> list[dict]:
    timing = {"seconds", "eval_seconds", "samples_per_second"}
    return [{k: v for k, v in r.items() if k not in timing} for r in result.epochs]


def test_same_file_and_seed_give_the_same_run_bit_for_bit() -> None:
    cfg = load_config(quick(model={"dropout": 0.2}))
    a, b = train(cfg), train(cfg)
    assert _history(a) == _history(b) and a.test == b.test
    for (name, p), (_, q) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(p, q), name
    c = train(load_config(quick(model={"dropout": 0.2}, train={"seed": 2})))
    assert _history(c) != _history(a)


def test_history_records_every_epoch() -> None:
    result = train(load_config(quick(train={"epochs": 3}, regularization={"l2": 1e-4})))
    assert [r["epoch"] for r in result.epochs] == [1, 2, 3]
    for r in result.epochs:
        assert set(r) == {"epoch", "train", "val", "lr", "batch_size", "seconds", "eval_seconds",
                          "samples_per_second"}
        assert r["lr"] == 1e-3 and r["batch_size"] == 100 and r["samples_per_second"] > 0
        assert set(r["val"]) == {"loss", "accuracy", "macro_f1"} and r["train"]["penalty"] > 0
    assert result.epochs[-1]["train"]["loss"] < result.epochs[0]["train"]["loss"]
    assert result.metric("test.accuracy") == result.test["accuracy"] > 0.5
    assert result.metric("val.loss") == result.epochs[-1]["val"]["loss"]


def test_on_epoch_can_stop_the_run() -> None:
    seen = []

    def hook(epoch: int, record: dict) -> str | None:
        seen.append((epoch, record["val"]["accuracy"]))
        return "stop" if epoch == 2 else None

    result = train(load_config(quick(train={"epochs": 5})), on_epoch=hook)
    assert result.status == "stopped" and len(result.epochs) == 2 and [e for e, _ in seen] == [1, 2]
    assert "accuracy" in result.test


def test_a_diverging_loss_ends_the_run_as_diverged() -> None:
    result = train(load_config(quick(optim={"name": "sgd", "lr": 1e12}, train={"epochs": 5})))
    assert result.status == "diverged"
    assert len(result.epochs) < 5 and not np.isfinite(result.epochs[-1]["train"]["loss"])
    assert result.test == {}
    assert json.loads(json.dumps(result.to_dict()))["epochs"][-1]["train"]["loss"] is None


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_learns(name: str) -> None:
    lr = {"sgd": 0.1, "rmsprop": 1e-3}.get(name, 1e-3)
    result = train(load_config(quick(optim={"name": name, "lr": lr, "momentum": 0.9 if name == "sgd" else 0.0,
                                             "nesterov": name == "sgd"})))
    assert result.test["accuracy"] > 0.6


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_trains_on_images(name: str) -> None:
    model = {"name": name, "channels": [8], "head": [32], "hidden_size": 32, "bidirectional": name == "gru"}
    result = train(load_config(quick(data={"name": "digits"}, model=model, optim={"lr": 1e-2}, train={"epochs": 3})))
    assert result.status == "completed" and result.test["accuracy"] > 0.3  # 10 classes: chance is 0.1
    assert result.parameters > 0


def test_cnn_on_a_table_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"model.name: cnn needs image data .* 30 tabular features"):
        train(load_config(quick(data={"name": "breast-cancer", "limit": None}, model={"name": "cnn"})))


def test_loss_must_fit_the_task() -> None:
    with pytest.raises(ConfigError, match="loss.name: cross_entropy does not fit a regression task; use one of: auto, huber, mae, mse"):
        train(load_config(quick(data={"name": "diabetes", "limit": None}, loss={"name": "cross_entropy"})))


class Squares(Dataset):
    """A user's Dataset: 8x8 images with a bright square in one of 4 corners (the label)."""

    def __init__(self, n: int) -> None:
        self.labels = [i % 4 for i in range(n)]
        self.targets = self.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(i)
        x = torch.rand(1, 8, 8, generator=g) * 0.5
        r, c = divmod(self.labels[i], 2)
        x[0, r * 4 : r * 4 + 4, c * 4 : c * 4 + 4] += 1.0
        return x, self.labels[i]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_user_dataset_goes_through_a_dataloader(workers: int) -> None:
    cfg = load_config({"model": {"hidden": [16]}, "parallel": {"workers": workers}, "train": {"epochs": 3},
                       "optim": {"lr": 1e-2}, "batch": {"size": 32}})
    result = train(cfg, data=Squares(400))
    assert result.data["sizes"] == {"train": 288, "val": 32, "test": 80}
    assert result.test["accuracy"] > 0.9
    again = train(cfg, data=Squares(400))
    assert _history(again) == _history(result)


def test_run_folder_holds_config_metrics_weights_environment(tmp_path: Path) -> None:
    result = train(load_config(quick()), out_dir=tmp_path / "run")
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["config.toml", "environment.json", "metrics.json",
                                                     "model.safetensors"]
    assert load_config(run / "config.toml") == result.config
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"] == result.test and len(metrics["epochs"]) == 2
    assert metrics["data"]["normalization"]["method"] == "standard"
    env = json.loads((run / "environment.json").read_text())
    assert {"python", "torch", "dltune", "cpu", "torch_threads", "git_revision"} <= set(env)
    weights = load_file(str(run / "model.safetensors"))
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(weights[name], tensor.cpu())  # the file is read onto the CPU; the model may be on a GPU


def test_threads_are_set_for_the_run_and_restored() -> None:
    before = torch.get_num_threads()
    result = train(load_config(quick(parallel={"threads": 1}, train={"epochs": 1})))
    assert result.environment["torch_threads"] == 1
    assert torch.get_num_threads() == before


def test_cuda_when_absent_is_a_config_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ConfigError, match="train.device: cuda was asked for"):
        train(load_config(quick(train={"device": "cuda"})))


def test_a_diverged_run_says_where_with_the_last_finite_loss_and_the_lr() -> None:
    result = train(load_config(quick(optim={"name": "sgd", "lr": 1e6})))
    assert result.status == "diverged" and result.test == {}
    d = result.divergence
    assert d is not None and d.epoch == len(result.epochs) == 1
    assert d.batches == -(-result.data["sizes"]["train"] // 100) and 1 <= d.batch <= d.batches
    assert d.step == d.batch and d.lr == 1e6 and not np.isfinite(d.loss)
    assert d.last_finite_loss is None if d.batch == 1 else np.isfinite(d.last_finite_loss)
    assert "diverged at epoch 1, batch" in d.describe() and "lr 1e+06" in d.describe()
    assert result.to_dict()["divergence"]["step"] == d.step


def test_divergence_step_and_lr_match_a_replay_of_the_run() -> None:
    # one-cycle changes the lr every step: the reported lr must be the one the diverging batch used, and
    # the batch the first whose loss a plain replay (torch's SGD and OneCycleLR, same seed) finds not finite
    epochs = 3
    cfg = load_config(quick(optim={"name": "sgd", "lr": 3000.0}, schedule={"name": "onecycle"},
                            train={"epochs": epochs}))
    d = train(cfg).divergence
    assert d is not None and d.epoch > 1  # the run trained whole epochs first
    losses: list[float] = []
    lrs: list[float] = []
    with torch_settings(cfg):
        run = setup(cfg)
        optimizer = torch.optim.SGD(run.model.parameters(), lr=cfg.optim.lr)
        steps = -(-len(run.splits.train[1]) // cfg.batch.size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.optim.lr, total_steps=steps * epochs,
                                                       cycle_momentum=False)
        batches = batcher(run.splits, cfg, run.device)
        for _ in range(epochs):
            for xb, yb in batches(cfg.batch.size):
                loss = run.loss_fn(run.model(xb), yb)
                losses.append(loss.item())
                lrs.append(optimizer.param_groups[0]["lr"])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
    first = next(i for i, v in enumerate(losses) if not np.isfinite(v))
    assert (d.step, d.epoch, d.batch) == (first + 1, first // steps + 1, first % steps + 1)
    assert d.lr == pytest.approx(lrs[first], rel=1e-9)
    assert d.last_finite_loss == pytest.approx(losses[first - 1], rel=1e-4)
