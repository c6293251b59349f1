"""Runs logged to TensorBoard and MLflow besides their run folders ([tracking]; the optional extras
`pip install 'dltune[tracking]'`). The callbacks are dltune's own, a few lines each: Optuna's integration callbacks
are deprecated, and a trial here is a training run, logged as one.

A run opens its trackers before it trains (a tracker that cannot work, such as an unreachable MLflow URI, is an error
then, before anything is trained), tells them each epoch's record, and at the end its result and run folder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from dltune.epochs import EpochRecord
from dltune.experiment.sections import ExperimentConfig
from dltune.imports import need_extra

__all__ = ["Run", "Tracker", "flat_params", "named", "open_trackers", "ready", "require_trackers", "told"]

OnEpoch = Callable[[int, EpochRecord], Any]


@dataclass(frozen=True)
class Run:
    """What a tracker logs a run as: its experiment, its name and tags, and the folder an MLflow database defaults
    to (tracking.mlflow = true)."""

    experiment: str
    name: str
    tags: Mapping[str, str] = field(default_factory=dict)
    folder: Path | None = None


class Tracker(Protocol):
    def epoch(self, epoch: int, record: EpochRecord) -> None: ...
    def end(self, result: Mapping[str, Any], run_dir: str | None) -> None: ...
    def fail(self) -> None: ...


def require_trackers(config: ExperimentConfig) -> None:
    """The packages of the trackers [tracking] asks for, or an error that says how to install them: checked by
    train, tune and ablate before they write or train anything."""
    if config.tracking.tensorboard:
        need_extra("tracking", "tensorboard", who="tracking.tensorboard: TensorBoard")
    if config.tracking.mlflow:
        need_extra("tracking", "mlflow", who="tracking.mlflow: MLflow")


def open_trackers(config: ExperimentConfig, run: Run) -> list[Tracker]:
    """The trackers [tracking] asks for, opened for `run` (none when it asks for none)."""
    require_trackers(config)
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
    require_trackers(config)
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


def named(config: ExperimentConfig, track: Run | None, run_dir: Path | None) -> Run:
    """How trackers name a run: as `track` says, else by its run folder; tracking.experiment wins."""
    if track is None:
        track = Run("dltune", run_dir.name if run_dir is not None else "run",
                    folder=run_dir.parent if run_dir is not None else None)
    return replace(track, experiment=config.tracking.experiment or track.experiment)


def told(on_epoch: OnEpoch | None, trackers: list[Tracker]) -> OnEpoch | None:
    """on_epoch, after the trackers have logged the epoch."""
    if not trackers:
        return on_epoch

    def tracked(epoch: int, record: EpochRecord) -> Any:
        for tracker in trackers:
            tracker.epoch(epoch, record)
        return on_epoch(epoch, record) if on_epoch is not None else None

    return tracked


def metric_values(record: EpochRecord) -> dict[str, float]:
    """One epoch's record as flat metric names: train.loss, val.accuracy, lr, batch_size, samples_per_second."""
    fields: Mapping[str, object] = record
    values: dict[str, float] = {}
    for split in ("train", "val"):
        metrics = fields.get(split)
        if isinstance(metrics, Mapping):
            values.update({f"{split}.{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
    for key in ("lr", "batch_size", "samples_per_second", "seconds"):
        value = fields.get(key)
        if isinstance(value, (int, float)):
            values[key] = float(value)
    return values
