"""Learning-rate schedules by name, built on torch.optim.lr_scheduler.

A schedule is a torch scheduler plus when it steps: after every batch or after every epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from dltune.config import ScheduleConfig
from dltune.registry import Registry

__all__ = ["SCHEDULES", "Schedule", "build_schedule"]


@dataclass(frozen=True)
class Schedule:
    scheduler: torch.optim.lr_scheduler.LRScheduler | None  # None: the lr never changes
    per: Literal["batch", "epoch"] = "epoch"


# factory(config, optimizer, steps_per_epoch, epochs) -> Schedule
Factory = Callable[[ScheduleConfig, torch.optim.Optimizer, int, int], Schedule]
SCHEDULES: Registry[Factory] = Registry("schedule")

SCHEDULES.register("constant", lambda cfg, opt, steps, epochs: Schedule(None))


def build_schedule(cfg: ScheduleConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int) -> Schedule:
    """The schedule named by schedule.name for a run of `epochs` × `steps_per_epoch` optimizer steps."""
    return SCHEDULES.get(cfg.name, path="schedule.name")(cfg, optimizer, steps_per_epoch, epochs)
