"""dltune: tune the performance of deep learning models on PyTorch and Optuna, with measured evidence."""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dltune.compress import compress
    from dltune.ensemble import ensemble, load_ensemble
    from dltune.config import ExperimentConfig, load_config, override, to_toml
    from dltune.errors import ConfigError, DataError, DltuneError
    from dltune.finders import batch_find, loader_find, lr_find
    from dltune.parallel import Nodes
    from dltune.predict import predict
    from dltune.study.ablate import ablate, load_ablation
    from dltune.study.tune import tune
    from dltune.auto import train
    from dltune.train import RunResult

__all__ = [
    "ablate",
    "batch_find",
    "compress",
    "ConfigError",
    "DataError",
    "DltuneError",
    "ensemble",
    "ExperimentConfig",
    "load_ablation",
    "load_ensemble",
    "load_config",
    "loader_find",
    "lr_find",
    "Nodes",
    "override",
    "predict",
    "RunResult",
    "to_toml",
    "train",
    "tune",
]

# Where each public name lives. They are imported on first use (PEP 562), not here: `import dltune.cli` runs this
# file, and `dltune --help` should not wait for torch, Optuna and scikit-learn (tests/test_startup.py).
_HOMES = {
    "ablate": "dltune.study.ablate",
    "batch_find": "dltune.finders",
    "Nodes": "dltune.parallel",
    "compress": "dltune.compress",
    "ConfigError": "dltune.errors",
    "DataError": "dltune.errors",
    "DltuneError": "dltune.errors",
    "ensemble": "dltune.ensemble",
    "ExperimentConfig": "dltune.config",
    "load_ablation": "dltune.study.ablate",
    "load_config": "dltune.config",
    "load_ensemble": "dltune.ensemble",
    "loader_find": "dltune.finders",
    "lr_find": "dltune.finders",
    "override": "dltune.config",
    "predict": "dltune.predict",
    "RunResult": "dltune.train",
    "to_toml": "dltune.config",
    "train": "dltune.auto",  # the run loop, after the settings of train.auto are found
    "tune": "dltune.study.tune",
}


def __getattr__(name: str) -> Any:
    """`dltune.train` and `from dltune import train`: the public name, imported from its module on first use."""
    if name not in _HOMES:
        raise AttributeError(f"module 'dltune' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # later look-ups do not come here again
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """The package, whose public names are never hidden by its submodules: when `dltune.train` (the module) is
    first imported, the import system binds it on the package as `train`, where the function `train` belongs."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _HOMES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
