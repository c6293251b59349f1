"""dltune: tune the performance of deep learning models on PyTorch and Optuna, with measured evidence."""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

if sys.platform == "win32":
    # dltune.files holds a folder's lock with fcntl.flock (the kernel drops it however the process ends) and reads
    # its holder's pid with os.pread: POSIX calls that Windows lacks
    raise ImportError("dltune runs on Linux and macOS (it locks files with fcntl); on Windows, run it in WSL 2")

if TYPE_CHECKING:
    from dltune.compression import compress
    from dltune.ensembles import ensemble, load_ensemble
    from dltune.errors import ConfigError, DataError, DltuneError
    from dltune.experiment.config import ExperimentConfig, load_config, override, to_toml
    from dltune.parallel import Nodes
    from dltune.prediction import predict
    from dltune.run.results import RunResult
    from dltune.study.ablate import ablate, load_ablation
    from dltune.study.tune import tune
    from dltune.tuner.auto import train
    from dltune.tuner.finders import batch_find, loader_find, lr_find
    from dltune.tuner.profile import profile

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
    "profile",
    "RunResult",
    "to_toml",
    "train",
    "tune",
]

# Where each public name lives. They are imported on first use (PEP 562), not here: `import dltune.cli` runs this
# file, and `dltune --help` should not wait for torch, Optuna and scikit-learn (tests/test_startup.py).
_HOMES = {
    "ablate": "dltune.study.ablate",
    "batch_find": "dltune.tuner.finders",
    "Nodes": "dltune.parallel",
    "compress": "dltune.compression",
    "ConfigError": "dltune.errors",
    "DataError": "dltune.errors",
    "DltuneError": "dltune.errors",
    "ensemble": "dltune.ensembles",
    "ExperimentConfig": "dltune.experiment.config",
    "load_ablation": "dltune.study.ablate",
    "load_config": "dltune.experiment.config",
    "load_ensemble": "dltune.ensembles",
    "loader_find": "dltune.tuner.finders",
    "lr_find": "dltune.tuner.finders",
    "override": "dltune.experiment.config",
    "predict": "dltune.prediction",
    "profile": "dltune.tuner.profile",
    "RunResult": "dltune.run.results",
    "to_toml": "dltune.experiment.config",
    "train": "dltune.tuner.auto",  # check, find the settings of train.auto, then the loop (dltune.run.loop.fit)
    "tune": "dltune.study.tune",
}


def __getattr__(name: str) -> Any:
    """`dltune.train` and `from dltune import train`: the public name, imported from its module on first use; and
    `dltune.__version__`, the installed distribution's version, read when first asked for."""
    if name == "__version__":
        value: Any = _version()
    elif name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
    else:
        raise AttributeError(f"module 'dltune' has no attribute {name!r}")
    globals()[name] = value  # later look-ups do not come here again
    return value


def _version() -> str:
    """The version pip installed ("unknown" when the package runs from a folder that was never installed)."""
    import importlib.metadata  # here, not above: `import dltune` stays light (tests/test_startup.py)

    try:
        return importlib.metadata.version("dltune")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

