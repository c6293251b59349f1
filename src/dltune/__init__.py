"""dltune: tune the performance of deep learning models on PyTorch and Optuna, with measured evidence."""

from __future__ import annotations

from dltune.ablate import ablate, load_ablation
from dltune.config import ExperimentConfig, load_config, override, to_toml
from dltune.errors import ConfigError, DataError, DltuneError
from dltune.finders import batch_find, loader_find, lr_find
from dltune.train import RunResult, train
from dltune.tune import tune

__all__ = [
    "ablate",
    "batch_find",
    "ConfigError",
    "DataError",
    "DltuneError",
    "ExperimentConfig",
    "load_ablation",
    "load_config",
    "loader_find",
    "lr_find",
    "override",
    "RunResult",
    "to_toml",
    "train",
    "tune",
]
