"""dltune: tune the performance of deep learning models on PyTorch and Optuna, with measured evidence."""

from __future__ import annotations

from dltune.ablate import ablate, load_ablation
from dltune.config import ExperimentConfig, load_config, override, to_toml
from dltune.errors import ConfigError, DataError, DltuneError
from dltune.train import RunResult, train

__all__ = [
    "ablate",
    "ConfigError",
    "DataError",
    "DltuneError",
    "ExperimentConfig",
    "load_ablation",
    "load_config",
    "override",
    "RunResult",
    "to_toml",
    "train",
]
