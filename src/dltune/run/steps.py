"""A training step and an evaluation of the user's own (model.step, model.predict), checked where they are called:
what they raise or return wrong is said with the key that named them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dltune.errors import UserCodeError
from dltune.experiment.config import ExperimentConfig
from dltune.imports import call, load

__all__ = ["OwnStep", "PredictFn", "StepFn", "own_step"]

StepFn = Callable[[nn.Module, Any], torch.Tensor]  # (model, batch) -> the batch's mean loss
PredictFn = Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor]]  # (model, batch) -> (outputs, targets)


@dataclass(frozen=True)
class OwnStep:
    """The user's step, and their evaluation where they gave one."""

    step: StepFn
    predict: PredictFn | None


def own_step(config: ExperimentConfig) -> OwnStep | None:
    """model.step and model.predict imported (looked for in code.paths first); None without model.step."""
    m = config.model
    if m.step is None:
        return None
    folders = config.code.paths
    step = _checked_step(load(m.step, "model.step", folders), f"model.step = {m.step!r}")
    predict = (_checked_predict(load(m.predict, "model.predict", folders), f"model.predict = {m.predict!r}")
               if m.predict is not None else None)
    return OwnStep(step, predict)


def _checked_step(fn: Callable[..., Any], named: str) -> StepFn:
    def step(model: nn.Module, batch: Any) -> torch.Tensor:
        loss = call(fn, named, model, batch)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            shape = list(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise UserCodeError(f"{named}: returned {shape}; a step returns the batch's mean loss, a tensor with one "
                                "value (loss.backward() is called on it)")
        return loss.reshape(())

    return step


def _checked_predict(fn: Callable[..., Any], named: str) -> PredictFn:
    def predict(model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        value = call(fn, named, model, batch)
        if (not isinstance(value, (tuple, list)) or len(value) != 2
                or not all(isinstance(v, torch.Tensor) for v in value)):
            raise UserCodeError(f"{named}: returned {type(value).__name__}; predict returns (outputs, targets), two "
                                "tensors with one row per example")
        outputs, targets = value
        if outputs.shape[:1] != targets.shape[:1]:
            raise UserCodeError(f"{named}: returned {outputs.shape[0]} outputs for {targets.shape[0]} targets; "
                                "predict returns one row of each per example")
        return outputs, targets

    return predict
