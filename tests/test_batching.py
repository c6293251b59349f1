"""Batch-size policies, lr coupling and gradient accumulation."""

from __future__ import annotations

import math

import pytest
import torch

from dltune import train
from dltune.errors import ConfigError
from dltune.experiment.config import load_config
from dltune.experiment.sections import BatchConfig
from dltune.techniques.batching import batch_sizes, lr_scales


def test_grow_policy_sizes_and_coupling() -> None:
    cfg = BatchConfig(size=50, policy="grow", grow_at=(2, 4), factor=2.0, lr_coupling="linear")
    assert batch_sizes(cfg, 5) == [50, 100, 100, 200, 200]
    assert lr_scales(cfg, 5) == [1, 2, 2, 4, 4]
    sqrt = BatchConfig(size=50, policy="grow", grow_at=(2, 4), lr_coupling="sqrt")
    assert lr_scales(sqrt, 5) == pytest.approx([1, math.sqrt(2), math.sqrt(2), 2, 2])
    assert batch_sizes(BatchConfig(size=64), 3) == [64, 64, 64]


def test_growing_batch_in_a_run() -> None:
    run = train(load_config({"data": {"limit": 600}, "model": {"hidden": [16]}, "train": {"epochs": 4},
                             "batch": {"size": 32, "policy": "grow", "grow_at": [3], "lr_coupling": "sqrt"},
                             "schedule": {"name": "exponential", "gamma": 0.5}}))
    assert [r["batch_size"] for r in run.epochs] == [32, 32, 64, 64]
    # the coupling multiplies whatever the schedule sets
    assert [r["lr"] for r in run.epochs] == pytest.approx([1e-3, 5e-4, 2.5e-4 * math.sqrt(2), 1.25e-4 * math.sqrt(2)])


def test_accumulating_4_batches_of_25_is_one_batch_of_100() -> None:
    # 360 training examples: the last step gathers 25 + 25 + 10 examples, weighed as one batch of 60
    base = {"data": {"limit": 500}, "model": {"hidden": [16]}, "train": {"epochs": 2}, "optim": {"name": "sgd", "lr": 0.1}}
    whole = train(load_config({**base, "batch": {"size": 100}}))
    parts = train(load_config({**base, "batch": {"size": 25, "accumulate": 4}}))
    for p, q in zip(whole.model.parameters(), parts.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("batch", "message"), [
    ({"policy": "grow", "grow_at": [3, 2]}, "batch.grow_at: must be increasing epochs, got [3, 2]"),
    ({"policy": "grow", "grow_at": [2, 2]}, "batch.grow_at: must be increasing epochs, got [2, 2]"),
    ({"policy": "grow"}, "batch.grow_at: batch.policy grow needs the epochs"),
    ({"policy": "grow", "grow_at": [12]}, "batch.grow_at: epoch 12 is after the last epoch (10)"),
    ({"grow_at": [2]}, 'batch.grow_at, batch.lr_coupling: only used with batch.policy = "grow"'),
    ({"policy": "shrink"}, "batch.policy: unknown batch policy 'shrink'; known: fixed, grow"),
])
def test_bad_batch_policies(batch: dict, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        train(load_config({"batch": batch}))
    assert message in str(e.value)
