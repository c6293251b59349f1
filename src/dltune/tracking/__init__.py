"""Runs logged to TensorBoard and MLflow besides their run folders ([tracking]; the optional extras
`pip install 'dltune[tracking]'`). The callbacks are dltune's own, a few lines each: Optuna's integration callbacks
are deprecated, and a trial here is a training run, logged as one.

A run opens its trackers before it trains (a tracker that cannot work, such as an unreachable MLflow URI, is an error
then, before anything is trained), tells them each epoch's record, and at the end its result and run folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dltune.experiment.sections import ExperimentConfig

__all__ = ["Run", "Tracker", "flat_params", "open_trackers", "ready"]


@dataclass(frozen=True)
class Run:
    """What a tracker logs a run as: its experiment, its name and tags, and the folder an MLflow database defaults
    to (tracking.mlflow = true)."""

    experiment: str
    name: str
    tags: Mapping[str, str] = field(default_factory=dict)
    folder: Path | None = None


class Tracker(Protocol):
    def epoch(self, epoch: int, record: Mapping[str, Any]) -> None: ...
    def end(self, result: Mapping[str, Any], run_dir: str | None) -> None: ...
    def fail(self) -> None: ...


def open_trackers(config: ExperimentConfig, run: Run) -> list[Tracker]:
    """The trackers [tracking] asks for, opened for `run` (none when it asks for none)."""
    trackers: list[Tracker] = []
    tracking = config.tracking
    if tracking.tensorboard:
        from dltune.tracking.tensorboard_log import TensorBoardTracker

        trackers.append(TensorBoardTracker(Path(tracking.tensorboard), config, run))
    if tracking.mlflow:
        from dltune.tracking.mlflow_log import MLflowTracker

        trackers.append(MLflowTracker(tracking.mlflow, config, run))
    return trackers


def ready(config: ExperimentConfig, run: Run) -> None:
    """Check, before a study trains anything, that its trackers can log (an unreachable MLflow URI is an error
    here), and create a new MLflow store once, before the study's worker processes each open it."""
    if config.tracking.mlflow:
        from dltune.tracking.mlflow_log import experiment

        experiment(config.tracking.mlflow, run)


def flat_params(config: ExperimentConfig) -> dict[str, Any]:
    """The run's settings as dotted keys ("optim.lr"), scalars and lists only: what MLflow and TensorBoard call
    params or hparams. Study sections ([ablation], [search], [tracking]) are not the run's."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        elif node is not None:
            flat[prefix.rstrip(".")] = node

    walk(config.model_dump(mode="json", exclude={"ablation", "search", "tracking"}), "")
    return flat


def metric_values(record: Mapping[str, Any]) -> dict[str, float]:
    """One epoch's record as flat metric names: train.loss, val.accuracy, lr, batch_size, samples_per_second."""
    values: dict[str, float] = {}
    for split in ("train", "val"):
        for name, value in (record.get(split) or {}).items():
            if isinstance(value, (int, float)):
                values[f"{split}.{name}"] = float(value)
    for key in ("lr", "batch_size", "samples_per_second", "seconds"):
        if isinstance(record.get(key), (int, float)):
            values[key] = float(record[key])
    return values
