"""Every registered schedule, loss, batch policy and regularizer runs one short epoch on a tiny dataset."""

from __future__ import annotations

import pytest

from dltune import train
from dltune.experiment.config import load_config
from dltune.experiment.sections import RegularizationConfig
from dltune.techniques.batching import BATCH_POLICIES
from dltune.techniques.losses import LOSSES
from dltune.techniques.schedules import SCHEDULES

TINY = {"data": {"name": "digits", "limit": 300}, "model": {"hidden": [16]}, "batch": {"size": 32},
        "train": {"epochs": 2}}
TASK_DATA = {"classification": "digits", "binary": "breast-cancer", "regression": "diabetes"}
SCHEDULE_SETTINGS = {"multistep": {"milestones": [1]}, "plateau": {"patience": 0}}
BATCH_SETTINGS = {"grow": {"grow_at": [2], "lr_coupling": "linear"}}
# One setting for every key of [regularization]: a new key without a case here fails the coverage test.
REGULARIZERS = {
    "l1": {"l1": 1e-4}, "l2": {"l2": 1e-4}, "penalize_all": {"l2": 1e-4, "penalize_all": True},
    "decoupled_weight_decay": {"decoupled_weight_decay": 1e-2}, "dropconnect": {"dropconnect": 0.3},
    "augment": {"augment": ["shift", "rotate", "noise"]}, "shift_pixels": {"augment": ["shift"], "shift_pixels": 1.0},
    "rotate_degrees": {"augment": ["rotate"], "rotate_degrees": 5.0}, "noise_std": {"augment": ["noise"], "noise_std": 0.2},
    "early_stopping": {"early_stopping": 1}, "min_delta": {"early_stopping": 1, "min_delta": 0.01},
    "restore_best": {"early_stopping": 1, "restore_best": False}, "clip_norm": {"clip_norm": 1.0},
    "clip_value": {"clip_value": 0.1},
}


def _short(**sections: dict) -> dict:
    return {k: {**TINY.get(k, {}), **sections.get(k, {})} for k in {*TINY, *sections}}


@pytest.mark.parametrize("name", SCHEDULES.names())
@pytest.mark.parametrize("warmup", [0, 1])
def test_every_schedule(name: str, warmup: int) -> None:
    run = train(load_config(_short(schedule={"name": name, "warmup_epochs": warmup, **SCHEDULE_SETTINGS.get(name, {})})))
    assert run.status == "completed" and len(run.epochs) == 2 and run.test["accuracy"] > 0


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss(name: str) -> None:
    task = sorted(LOSSES.get(name).tasks)[0]
    run = train(load_config(_short(data={"name": TASK_DATA[task]}, loss={"name": name})))
    assert run.status == "completed" and run.data["loss"] == name and run.test


@pytest.mark.parametrize("name", BATCH_POLICIES.names())
@pytest.mark.parametrize("accumulate", [1, 3])
def test_every_batch_policy(name: str, accumulate: int) -> None:
    run = train(load_config(_short(batch={"policy": name, "accumulate": accumulate, **BATCH_SETTINGS.get(name, {})})))
    assert run.status == "completed"


@pytest.mark.parametrize("key", sorted(REGULARIZERS))
def test_every_regularizer(key: str) -> None:
    run = train(load_config(_short(regularization=REGULARIZERS[key])))
    assert run.status == "completed" and run.test["accuracy"] > 0


def test_every_regularization_key_has_a_case() -> None:
    assert set(RegularizationConfig.model_fields) == set(REGULARIZERS)
