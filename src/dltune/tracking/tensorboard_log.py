"""A run's scalars per epoch and its hparams, as TensorBoard event files in
<tracking.tensorboard>/<experiment>/<run>."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dltune.epochs import EpochRecord
from dltune.errors import ConfigError
from dltune.experiment.sections import ExperimentConfig

__all__ = ["TensorBoardTracker"]


class TensorBoardTracker:
    """train.loss, val.* metrics, lr, batch size and samples/s per epoch (step = epoch); at the end the run's
    settings and test metrics as hparams, so TensorBoard's HParams tab compares runs."""

    def __init__(self, folder: Path, config: ExperimentConfig, run: Any) -> None:
        from torch.utils.tensorboard import SummaryWriter  # installed: tracking.require_trackers checked it

        try:
            self.writer = SummaryWriter(log_dir=str(folder / run.experiment / run.name))
        except OSError as e:
            raise ConfigError(f"tracking.tensorboard = {str(folder)!r}: cannot write there ({e.strerror})") from None
        self.config = config

    def epoch(self, epoch: int, record: EpochRecord) -> None:
        from dltune.tracking import metric_values

        for name, value in metric_values(record).items():
            self.writer.add_scalar(name, value, epoch)
        self.writer.flush()

    def end(self, result: Mapping[str, Any], run_dir: str | None) -> None:
        from dltune.tracking import flat_params

        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                   for k, v in flat_params(self.config).items()}
        metrics = {f"test.{k}": float(v) for k, v in (result.get("test") or {}).items()
                   if isinstance(v, (int, float)) and math.isfinite(v)}
        self.writer.add_hparams(hparams, metrics or {"test.none": 0.0}, run_name=".")
        self.writer.close()

    def fail(self) -> None:
        self.writer.close()
