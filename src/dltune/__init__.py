"""dltune: tune the performance of deep learning models on PyTorch and Optuna, with measured evidence."""

from __future__ import annotations

from dltune.config import ExperimentConfig, load_config, override, to_toml
from dltune.errors import ConfigError, DataError, DltuneError
from dltune.train import RunResult, train

__all__ = [
    "ConfigError",
    "DataError",
    "DltuneError",
    "ExperimentConfig",
    "RunResult",
    "load_config",
    "override",
    "to_toml",
    "train",
]
