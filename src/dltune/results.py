"""What a run produced (RunResult) and its run folder: config, metrics, weights, environment."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from safetensors.torch import save_file
from torch import nn

from dltune.config import ExperimentConfig, to_toml
from dltune.errors import ConfigError

__all__ = ["RunResult", "Status", "ensure_writable", "prepare_run_dir", "write_run"]

Status = Literal["completed", "stopped", "diverged"]


@dataclass
class RunResult:
    """What a run produced. `epochs` holds one record per epoch; metrics nest by split
    (`test["accuracy"]` is the path "test.accuracy")."""

    status: Status
    epochs: list[dict[str, Any]]
    test: dict[str, float]
    train_seconds: float  # optimizer steps only; evaluation is timed apart, per epoch
    samples_per_second: float  # training examples per second of train_seconds
    parameters: int
    config: ExperimentConfig
    data: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    best_epoch: int | None = None  # early stopping: the epoch whose weights the model ends with
    threshold: float | None = None  # binary tasks with loss.threshold: the decision threshold chosen on val
    run_dir: str | None = None
    model: nn.Module | None = field(default=None, repr=False)

    def metric(self, path: str) -> float:
        """A metric by dotted path: "test.accuracy", or "val.loss" / "train.loss" of the last epoch."""
        split, _, name = path.partition(".")
        last = self.epochs[-1] if self.epochs else {}
        source = self.test if split == "test" else last.get(split) or {}
        if name not in source:
            known = [f"test.{k}" for k in self.test] + [f"{s}.{k}" for s in ("train", "val") for k in last.get(s) or {}]
            raise KeyError(f"no metric {path!r}; recorded: {', '.join(known)}")
        return source[name]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: non-finite numbers become None."""
        return _finite({
            "status": self.status,
            "test": self.test,
            "epochs": self.epochs,
            "train_seconds": self.train_seconds,
            "samples_per_second": self.samples_per_second,
            "parameters": self.parameters,
            "best_epoch": self.best_epoch,
            "threshold": self.threshold,
            "run_dir": self.run_dir,
            "data": self.data,
            "environment": self.environment,
            "config": self.config.model_dump(mode="json"),
        })


def write_run(result: RunResult, out_dir: str | Path) -> Path:
    """Write config.toml, metrics.json, environment.json and model.safetensors into `out_dir`."""
    run_dir = Path(out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    result.run_dir = str(run_dir)
    (run_dir / "config.toml").write_text(to_toml(result.config))
    metrics = result.to_dict()
    environment_info = metrics.pop("environment")
    metrics.pop("config")
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (run_dir / "environment.json").write_text(json.dumps(environment_info, indent=2) + "\n")
    if result.model is not None:
        state = {k: v.detach().contiguous().cpu() for k, v in result.model.state_dict().items()}
        save_file(state, str(run_dir / "model.safetensors"))
    return run_dir


def prepare_run_dir(out: str | Path | None, stem: str) -> Path:
    """`out` when given, else runs/<stem>-<date>-<time>. Checked before training and created only
    when the run is written: a folder that holds a run already is refused, never overwritten."""
    if out is None:
        base = Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir, n = base, 1
        while run_dir.exists():
            n += 1
            run_dir = base.with_name(f"{base.name}-{n}")
    else:
        run_dir = Path(out)
        if (run_dir / "metrics.json").exists():
            raise ConfigError(f"--out {run_dir}: already holds a run (metrics.json); choose another folder")
    existing = next(p for p in (run_dir.absolute(), *run_dir.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {run_dir}: cannot write there ({existing} is not a writable folder)")
    return run_dir


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def ensure_writable(out: Path) -> None:
    """Create the output folder `out` and prove that files can be written there, before any work."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write there ({e.strerror})") from None
