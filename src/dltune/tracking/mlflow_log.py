"""A run as an MLflow run: its settings as params, each epoch's metrics in one batch, the test metrics, and its run
folder as artifacts. Through MlflowClient only: the process-wide tracking URI and active run stay the caller's."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dltune.epochs import EpochRecord
from dltune.errors import ConfigError, mask_password
from dltune.experiment.sections import ExperimentConfig

__all__ = ["MLflowTracker", "experiment"]

MAX_PARAMS = 100  # per log_batch call (MLflow's limit)


def experiment(setting: str | bool, run: Any) -> tuple[Any, str]:
    """A client of the tracking store and the id of the run's experiment, created if new. Also the check, before
    training, that the store can be reached and written; and, run once by a study before its worker processes
    start, the one creation of a new SQLite store (two processes creating one at once break its tables)."""
    from mlflow import MlflowClient  # installed: tracking.require_trackers checked it
    if isinstance(setting, str):
        uri = setting
    elif run.folder is not None:
        uri = f"sqlite:///{Path(run.folder).resolve() / 'mlflow.db'}"
    else:
        raise ConfigError("tracking.mlflow = true keeps its database in the output folder, and this run has none; "
                          "give an out folder, or a tracking URI")
    with _fail_fast():
        try:
            client = MlflowClient(tracking_uri=uri)
            found = client.get_experiment_by_name(run.experiment)
            if found is not None:
                return client, found.experiment_id
            artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / run.experiment).as_uri() \
                if uri.startswith("sqlite:///") else None
            return client, client.create_experiment(run.experiment, artifact_location=artifacts)
        except Exception as e:  # noqa: BLE001 - any failure to reach the store is the user's setting to fix
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"tracking.mlflow = {mask_password(uri)!r}: cannot log there: "
                              f"{mask_password(reason)[:300]}") from None


class MLflowTracker:
    def __init__(self, setting: str | bool, config: ExperimentConfig, run: Any) -> None:
        from mlflow.entities import Param

        self.client, experiment_id = experiment(setting, run)
        self.run_id = self.client.create_run(experiment_id, run_name=run.name,
                                             tags={"dltune": "run", **run.tags}).info.run_id
        from dltune.tracking import flat_params

        params = [Param(k, str(v)[:6000]) for k, v in flat_params(config).items()]
        for i in range(0, len(params), MAX_PARAMS):
            self.client.log_batch(self.run_id, params=params[i : i + MAX_PARAMS])

    def epoch(self, epoch: int, record: EpochRecord) -> None:
        from dltune.tracking import metric_values

        self._log(metric_values(record), epoch)

    def end(self, result: Mapping[str, Any], run_dir: str | None) -> None:
        test = {f"test.{k}": v for k, v in (result.get("test") or {}).items() if isinstance(v, (int, float))}
        self._log(test, len(result.get("epochs") or []))
        if run_dir is not None and Path(run_dir).is_dir():
            for entry in sorted(Path(run_dir).iterdir()):  # the run's files, not the bookkeeping of its checkpoints
                if entry.name == "checkpoint" or entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    self.client.log_artifacts(self.run_id, str(entry), entry.name)
                else:
                    self.client.log_artifact(self.run_id, str(entry))
        self.client.set_terminated(self.run_id, "FINISHED")

    def fail(self) -> None:
        self.client.set_terminated(self.run_id, "FAILED")

    def _log(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items() if math.isfinite(v)]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)  # one call per epoch, every metric in it


@contextmanager
def _fail_fast() -> Iterator[None]:
    """MLflow retries an unreachable server for minutes; checking it before training needs an answer in seconds."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
