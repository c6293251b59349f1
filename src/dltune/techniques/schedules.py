"""Learning-rate schedules by name, built on torch.optim.lr_scheduler.

A schedule steps after every optimizer step (cosine, linear, polynomial, onecycle: defined over steps)
or after every epoch (step, multistep, exponential, plateau: defined over epochs), over explicit counts
computed before training. Linear warmup can go in front of any of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.optim import lr_scheduler as sched

from dltune.experiment.sections import ScheduleConfig
from dltune.registry import Registry

__all__ = ["SCHEDULES", "Schedule", "ScheduleSpec", "build_schedule"]

Unit = Literal["batch", "epoch"]
Scheduler = sched.LRScheduler | sched.ReduceLROnPlateau


@dataclass(frozen=True)
class ScheduleSpec:
    """A registered schedule: its stepping unit and a factory of the torch scheduler.

    make(config, optimizer, horizon, first_epoch_steps) -> scheduler or None (constant lr);
    `horizon` counts units (steps or epochs) after warmup.
    """

    unit: Unit
    make: Callable[[ScheduleConfig, torch.optim.Optimizer, int, int], Scheduler | None]
    needs_validation: bool = False


SCHEDULES: Registry[ScheduleSpec] = Registry("schedule")
SCHEDULES.register("constant", ScheduleSpec("epoch", lambda c, o, n, s: None))
SCHEDULES.register("step", ScheduleSpec("epoch", lambda c, o, n, s: sched.StepLR(o, c.step_size, c.gamma)))
SCHEDULES.register("multistep", ScheduleSpec(
    "epoch", lambda c, o, n, s: sched.MultiStepLR(o, list(c.milestones), c.gamma)))
SCHEDULES.register("exponential", ScheduleSpec("epoch", lambda c, o, n, s: sched.ExponentialLR(o, c.gamma)))
SCHEDULES.register("cosine", ScheduleSpec("batch", lambda c, o, n, s: (
    sched.CosineAnnealingWarmRestarts(o, T_0=c.cycle * s, T_mult=c.cycle_mult, eta_min=c.min_lr) if c.restarts
    else sched.CosineAnnealingLR(o, T_max=n, eta_min=c.min_lr))))
SCHEDULES.register("linear", ScheduleSpec("batch", lambda c, o, n, s: sched.LinearLR(
    o, start_factor=1.0, end_factor=c.end_factor, total_iters=n)))
SCHEDULES.register("polynomial", ScheduleSpec("batch", lambda c, o, n, s: sched.PolynomialLR(
    o, total_iters=n, power=c.power)))
SCHEDULES.register("onecycle", ScheduleSpec("batch", lambda c, o, n, s: sched.OneCycleLR(
    o, max_lr=[g["lr"] for g in o.param_groups], total_steps=n, pct_start=c.pct_start, div_factor=c.div_factor,
    final_div_factor=c.final_div_factor, cycle_momentum=False)))  # lr only: momentum stays as optim says
SCHEDULES.register("plateau", ScheduleSpec("epoch", lambda c, o, n, s: sched.ReduceLROnPlateau(
    o, mode="min", factor=c.gamma, patience=c.patience, threshold=c.threshold), needs_validation=True))


class Schedule:
    """Steps a torch scheduler (and its warmup) in its unit, under an lr scale for batch-size coupling.

    The scale multiplies whatever the schedule sets: the lr is divided by it before the torch
    scheduler steps and multiplied after, so chainable and closed-form schedulers both compose.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler: Scheduler | None, unit: Unit,
                 warmup: sched.LinearLR | None = None, warmup_units: int = 0) -> None:
        self.optimizer, self.scheduler, self.unit = optimizer, scheduler, unit
        self.warmup, self.warmup_units = warmup, warmup_units  # kept apart only for plateau
        self.units = 0
        self.scale = 1.0

    def after_step(self) -> None:
        if self.unit == "batch":
            self._advance(None)

    def after_epoch(self, val_loss: float | None) -> None:
        if self.unit == "epoch":
            self._advance(val_loss)

    def set_scale(self, scale: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] *= scale / self.scale
        self.scale = scale

    def state_dict(self) -> dict[str, Any]:
        """The schedule's place (a checkpoint): its counters and its torch schedulers' state."""
        return {"units": self.units, "scale": self.scale,
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "warmup": self.warmup.state_dict() if self.warmup is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.units, self.scale = state["units"], state["scale"]
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.warmup is not None:
            self.warmup.load_state_dict(state["warmup"])

    def _advance(self, val_loss: float | None) -> None:
        self._rescale(1.0 / self.scale)
        if self.warmup is not None and self.units < self.warmup_units:
            self.warmup.step()
        elif isinstance(self.scheduler, sched.ReduceLROnPlateau):
            assert val_loss is not None  # run.checks refuses plateau without a validation split
            self.scheduler.step(val_loss)
        elif self.scheduler is not None:
            self.scheduler.step()
        self.units += 1
        self._rescale(self.scale)

    def _rescale(self, factor: float) -> None:
        if factor != 1.0:
            for group in self.optimizer.param_groups:
                group["lr"] *= factor


def build_schedule(cfg: ScheduleConfig, optimizer: torch.optim.Optimizer, epoch_steps: Sequence[int]) -> Schedule:
    """The schedule for a run whose epoch e has epoch_steps[e] optimizer steps."""
    spec = SCHEDULES.get(cfg.name, path="schedule.name")
    per_unit = list(epoch_steps) if spec.unit == "batch" else [1] * len(epoch_steps)
    warmup_units = sum(per_unit[: cfg.warmup_epochs])
    horizon = max(1, sum(per_unit) - warmup_units)
    if warmup_units == 0:
        return Schedule(optimizer, spec.make(cfg, optimizer, horizon, epoch_steps[0]), spec.unit)
    warmup = sched.LinearLR(optimizer, start_factor=cfg.warmup_start, end_factor=1.0, total_iters=warmup_units)
    main = spec.make(cfg, optimizer, horizon, epoch_steps[0])
    if main is None or isinstance(main, sched.ReduceLROnPlateau):
        return Schedule(optimizer, main, spec.unit, warmup, warmup_units)
    return Schedule(optimizer, sched.SequentialLR(optimizer, [warmup, main], milestones=[warmup_units]), spec.unit)


def closed_form(cfg: ScheduleConfig, lr: float, t: int, horizon: int) -> float:
    """The lr after t units of the schedules that have a closed form (no warmup): the formulas of
    docs/techniques.md, for tests against the torch schedulers."""
    match cfg.name:
        case "constant":
            return lr
        case "step":
            return lr * cfg.gamma ** (t // cfg.step_size)
        case "multistep":
            return lr * cfg.gamma ** sum(1 for m in cfg.milestones if m <= t)
        case "exponential":
            return lr * cfg.gamma**t
        case "cosine":
            return cfg.min_lr + (lr - cfg.min_lr) * (1 + math.cos(math.pi * t / horizon)) / 2
        case "linear":
            return lr * (1 + (cfg.end_factor - 1) * min(t, horizon) / horizon)
        case "polynomial":
            return lr * (1 - min(t, horizon) / horizon) ** cfg.power
    raise ValueError(f"no closed form for {cfg.name}")
