"""Each schedule against its closed form and against the matching torch.optim.lr_scheduler class."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch.optim import lr_scheduler as sched

from dltune import train
from dltune.errors import ConfigError
from dltune.experiment.config import load_config
from dltune.experiment.sections import ScheduleConfig
from dltune.techniques.schedules import SCHEDULES, build_schedule, closed_form

LR = 0.1


def _optimizer(lr: float = LR) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _run(cfg: ScheduleConfig, epoch_steps: list[int], val_losses: list[float] | None = None) -> list[float]:
    """The lr of every optimizer step of a simulated run, as the training loop steps the schedule."""
    opt = _optimizer()
    schedule = build_schedule(cfg, opt, epoch_steps)
    lrs = []
    for e, steps in enumerate(epoch_steps):
        for _ in range(steps):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            schedule.after_step()
        schedule.after_epoch(None if val_losses is None else val_losses[e])
    return lrs


def _torch_run(make, epoch_steps: list[int], unit: str) -> list[float]:
    opt = _optimizer()
    scheduler = make(opt)
    lrs = []
    for steps in epoch_steps:
        for _ in range(steps):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            if unit == "batch":
                scheduler.step()
        if unit == "epoch":
            scheduler.step()
    return lrs


STEPS = [7] * 12  # 12 epochs of 7 steps
CASES = {
    "step": (dict(step_size=3, gamma=0.5), lambda o: sched.StepLR(o, 3, 0.5)),
    "multistep": (dict(milestones=[2, 5, 9], gamma=0.3), lambda o: sched.MultiStepLR(o, [2, 5, 9], 0.3)),
    "exponential": (dict(gamma=0.9), lambda o: sched.ExponentialLR(o, 0.9)),
    "cosine": (dict(min_lr=0.01), lambda o: sched.CosineAnnealingLR(o, T_max=84, eta_min=0.01)),
    "linear": (dict(end_factor=0.05), lambda o: sched.LinearLR(o, 1.0, 0.05, total_iters=84)),
    "polynomial": (dict(power=2.0), lambda o: sched.PolynomialLR(o, total_iters=84, power=2.0)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_schedule_matches_closed_form_and_torch(name: str) -> None:
    settings, make = CASES[name]
    cfg = ScheduleConfig(name=name, **settings)
    unit = SCHEDULES.get(name).unit
    ours = _run(cfg, STEPS)
    assert ours == pytest.approx(_torch_run(make, STEPS, unit), rel=1e-12)
    horizon = sum(STEPS) if unit == "batch" else len(STEPS)
    expected = [closed_form(cfg, LR, (i if unit == "batch" else i // 7), horizon) for i in range(len(ours))]
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_articles_exponential_example_is_0_0349_not_0_0009() -> None:
    """§4.1: η0 = 0.1, γ = 0.9, after 10 epochs: 0.1 · 0.9^10 = 0.0349 (the article prints 0.0009)."""
    cfg = ScheduleConfig(name="exponential", gamma=0.9)
    assert round(closed_form(cfg, 0.1, 10, 10), 4) == 0.0349
    lrs = _run(cfg, [1] * 11)
    assert lrs[10] == pytest.approx(0.1 * 0.9**10) and round(lrs[10], 4) == 0.0349


def test_articles_step_code_never_decays_in_its_10_epoch_run() -> None:
    """§5.4.1's lr · 0.1^(epoch // 10) over epochs 0..9 stays at lr: the 'decay' never happens."""
    lrs = _run(ScheduleConfig(name="step", step_size=10, gamma=0.1), [1] * 10)
    assert lrs == [LR] * 10


def test_onecycle_matches_torch() -> None:
    cfg = ScheduleConfig(name="onecycle", pct_start=0.25, div_factor=10, final_div_factor=100)
    ours = _run(cfg, STEPS)
    theirs = _torch_run(lambda o: sched.OneCycleLR(o, max_lr=LR, total_steps=84, pct_start=0.25, div_factor=10,
                                                   final_div_factor=100, cycle_momentum=False), STEPS, "batch")
    assert ours == pytest.approx(theirs, rel=1e-12)
    assert ours[0] == pytest.approx(LR / 10) and max(ours) == pytest.approx(LR, rel=1e-3)


def test_cosine_warm_restarts_match_torch() -> None:
    cfg = ScheduleConfig(name="cosine", restarts=True, cycle=2, cycle_mult=2, min_lr=0.001)
    ours = _run(cfg, STEPS)
    theirs = _torch_run(lambda o: sched.CosineAnnealingWarmRestarts(o, T_0=14, T_mult=2, eta_min=0.001), STEPS, "batch")
    assert ours == pytest.approx(theirs, rel=1e-12)
    assert ours[14] == pytest.approx(LR)  # the first restart, after 2 epochs of 7 steps


def test_plateau_matches_torch() -> None:
    losses = [1.0, 0.8, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]
    ours = _run(ScheduleConfig(name="plateau", gamma=0.5, patience=2), STEPS, losses)
    opt = _optimizer()
    plateau = sched.ReduceLROnPlateau(opt, factor=0.5, patience=2, threshold=1e-4)
    theirs = []
    for loss in losses:
        theirs += [opt.param_groups[0]["lr"]] * 7
        plateau.step(loss)
    assert ours == theirs and min(ours) < LR


def test_warmup_then_cosine() -> None:
    cfg = ScheduleConfig(name="cosine", warmup_epochs=2, warmup_start=0.1)
    ours = _run(cfg, STEPS)
    w = 14  # warmup steps
    warm = [LR * (0.1 + 0.9 * t / w) for t in range(w)]
    rest = [closed_form(cfg, LR, t, sum(STEPS) - w) for t in range(sum(STEPS) - w)]
    assert ours == pytest.approx(warm + rest, rel=1e-9)


def test_warmup_then_plateau() -> None:
    cfg = ScheduleConfig(name="plateau", warmup_epochs=3, warmup_start=0.25, patience=0, gamma=0.5)
    ours = _run(cfg, [1] * 6, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    # warmup over 3 epochs; then the plateau sees its first loss (a new best), then a stall: decay
    assert ours == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.05])


def test_history_records_lr_and_its_range_within_epochs() -> None:
    run = train(load_config({"data": {"name": "digits", "limit": 400}, "model": {"hidden": [16]},
                             "schedule": {"name": "cosine"}, "batch": {"size": 50}, "train": {"epochs": 4},
                             "optim": {"lr": 0.01}}))
    steps = math.ceil(run.data["sizes"]["train"] / 50)
    cfg = run.config.schedule
    for e, record in enumerate(run.epochs):
        assert record["lr"] == pytest.approx(closed_form(cfg, 0.01, e * steps, 4 * steps))
        low, high = record["lr_range"]
        assert high == pytest.approx(record["lr"]) and low < high
    exp = train(load_config({"data": {"name": "digits", "limit": 400}, "model": {"hidden": [16]},
                             "schedule": {"name": "exponential", "gamma": 0.5}, "train": {"epochs": 3}}))
    assert [r["lr"] for r in exp.epochs] == pytest.approx([1e-3, 5e-4, 2.5e-4])
    assert "lr_range" not in exp.epochs[0]


@pytest.mark.parametrize(("settings", "message"), [
    ({"schedule": {"name": "cosin"}}, "schedule.name: unknown schedule 'cosin' (did you mean 'cosine'?); known: constant"),
    ({"schedule": {"name": "plateau"}, "data": {"val_fraction": 0.0}}, "schedule.name: plateau watches val.loss"),
    ({"schedule": {"name": "multistep"}}, "schedule.milestones: multistep needs"),
    ({"schedule": {"warmup_epochs": 10}}, "schedule.warmup_epochs: 10 leaves no epoch"),
])
def test_bad_schedules_are_rejected_before_training(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        train(load_config(settings))
