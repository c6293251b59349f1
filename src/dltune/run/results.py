"""What a run produced (RunResult) and its run folder: config, metrics, weights, environment."""

from __future__ import annotations

import json
import os
import shutil
import time
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from safetensors.torch import save_file
from torch import nn

from dltune.epochs import EpochRecord
from dltune.errors import ConfigError
from dltune.experiment.config import ExperimentConfig, load_config, to_toml
from dltune.files import atomic_write, claim_dir, create_text, write_text
from dltune.run.checkpoints import CHECKPOINT, checkpoint_epoch, checkpoint_lock, has_checkpoint, held
from dltune.strict_json import json_ready

__all__ = ["RUN_FILES", "Divergence", "RunResult", "Status", "after_checkpoint", "claim_run_dir", "complete_run",
           "ensure_writable", "output_folder", "recorded_result", "run_claimed", "unfinished", "write_run"]

Status = Literal["completed", "stopped", "diverged"]


@dataclass(frozen=True)
class Divergence:
    """Where a run's training loss stopped being finite."""

    epoch: int
    batch: int  # 1-based, within the epoch
    batches: int  # batches in that epoch
    step: int  # 1-based batch count over the whole run
    loss: float  # the first loss that is not finite (nan or inf)
    last_finite_loss: float | None  # the batch before's (None: the very first batch)
    lr: float  # the lr that batch trained with

    def describe(self) -> str:
        """One sentence: where, the last finite loss, the lr."""
        before = (f"the loss was {self.last_finite_loss:.4g} one batch before, then {self.loss}"
                  if self.last_finite_loss is not None else f"the loss of the first batch was {self.loss}")
        return (f"diverged at epoch {self.epoch}, batch {self.batch} of {self.batches} (step {self.step}): "
                f"{before}; lr {self.lr:.3g}")


@dataclass
class RunResult:
    """What a run produced. `epochs` holds one record per epoch; metrics nest by split
    (`test["accuracy"]` is the path "test.accuracy")."""

    status: Status
    epochs: list[EpochRecord]
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
    divergence: Divergence | None = None  # status "diverged": where
    compile_seconds: float = 0.0  # train.compile: torch.compile's time, before the first epoch (not in train_seconds)
    auto: dict[str, Any] | None = None  # train.auto: what the finders chose, why, and their seconds
    transfer: dict[str, Any] | None = None  # transfer.from: the weights loaded, missing and unexpected; the head

    def metric(self, path: str) -> float:
        """A metric by dotted path: "test.accuracy", or "val.loss" / "train.loss" of the last epoch."""
        split, _, name = path.partition(".")
        last: Mapping[str, Any] = self.epochs[-1] if self.epochs else {}
        source = self.test if split == "test" else last.get(split) or {}
        if name not in source:
            known = [f"test.{k}" for k in self.test] + [f"{s}.{k}" for s in ("train", "val") for k in last.get(s) or {}]
            raise KeyError(f"no metric {path!r}; recorded: {', '.join(known)}")
        return source[name]

    def record(self) -> dict[str, Any]:
        """What a study stores of this run (records.store_run): to_dict(), with the experiment as TOML."""
        return {**{k: v for k, v in self.to_dict().items() if k != "config"}, "config_toml": to_toml(self.config)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (json_ready): non-finite numbers become None."""
        return json_ready({
            "status": self.status,
            "test": self.test,
            "epochs": self.epochs,
            "train_seconds": self.train_seconds,
            "samples_per_second": self.samples_per_second,
            "parameters": self.parameters,
            "best_epoch": self.best_epoch,
            "threshold": self.threshold,
            "divergence": asdict(self.divergence) if self.divergence is not None else None,
            "compile_seconds": self.compile_seconds,
            "auto": self.auto,
            "transfer": self.transfer,
            "run_dir": self.run_dir,
            "data": self.data,
            "environment": self.environment,
            "config": self.config.model_dump(mode="json"),
        })


def write_run(result: RunResult, out_dir: str | Path) -> Path:
    """Write environment.json, model.safetensors, config.toml and, last, metrics.json into `out_dir`, each
    atomically (temporary name, then rename): a folder with metrics.json holds a whole run."""
    run_dir = Path(out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    result.run_dir = str(run_dir)
    metrics = result.to_dict()
    environment_info = metrics.pop("environment")
    metrics.pop("config")
    write_text(run_dir / "environment.json", json.dumps(environment_info, indent=2) + "\n")
    if result.model is not None:
        state = {k: v.detach().contiguous().cpu() for k, v in result.model.state_dict().items()}
        with atomic_write(run_dir / "model.safetensors") as tmp:
            save_file(state, str(tmp))
    write_text(run_dir / "config.toml", to_toml(result.config))
    write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return run_dir


RUN_FILES = ("config.toml", "environment.json", "model.safetensors", "metrics.json")


def claim_run_dir(out: str | Path | None, stem: str) -> Path:
    """The folder a run will be written to, created now so that no other process takes it.

    `out` when given: a new folder, or an existing one that holds no run (refused otherwise, never
    overwritten). Else runs/<stem>-<date>-<time>, or the same name with -2, -3, ... when another run
    (another process started in the same second) has it. `train(out_dir=...)` then claims its config.toml.
    """
    if out is None:
        return claim_dir(Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir = Path(out)
    _refuse_run(run_dir, "--out ")
    existing = next(p for p in (run_dir.absolute(), *run_dir.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {run_dir}: cannot write there ({existing} is not a writable folder)")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


@contextmanager
def run_claimed(out_dir: str | Path | None, config: ExperimentConfig, resume: bool = False) -> Iterator[Path | None]:
    """Claim `out_dir` for one run while it trains: its config.toml is created exclusively and whole (written aside,
    then linked into place), so a second process given the same folder is refused, not mixed in. If the block
    raises (an error, Ctrl-C), the claim is taken back: config.toml is removed, and the folder too when it was
    empty before; unless the run saved a checkpoint (train.checkpoint_every), which stays with config.toml for a
    resume.

    `resume`: the folder holds this run's config.toml and no metrics.json (a run that was killed); the run goes on
    from its checkpoint, or starts again when it saved none. While a run trains its folder is held (a lock in
    checkpoint/, released by the kernel however the process ends), so that no two processes train one run. When the
    block ends well, the checkpoint is removed: the run folder then holds the whole run."""
    if out_dir is None:
        if resume or config.train.checkpoint_every:
            raise ConfigError("train.checkpoint_every / resume: checkpoints need a run folder (out_dir, --out)")
        yield None
        return
    run_dir = Path(out_dir)
    if resume:
        with _resumable(run_dir, config):
            yield run_dir
        shutil.rmtree(run_dir / CHECKPOINT, ignore_errors=True)
        return
    _refuse_run(run_dir, "")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        was_empty = not any(run_dir.iterdir())
        create_text(run_dir / "config.toml", to_toml(config))  # whole or absent, however the process ends
    except FileExistsError:
        raise ConfigError(f"{run_dir}: another run took this folder (config.toml); choose another folder") from None
    except OSError as e:
        raise ConfigError(f"{run_dir}: cannot write there ({e.strerror})") from None
    try:
        with checkpoint_lock(run_dir):
            yield run_dir
    except BaseException:
        if has_checkpoint(run_dir):  # kept with config.toml: `dltune train --resume` goes on from it
            raise
        shutil.rmtree(run_dir / CHECKPOINT, ignore_errors=True)
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
        if was_empty and not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise
    shutil.rmtree(run_dir / CHECKPOINT, ignore_errors=True)


def unfinished(run_dir: Path) -> str:
    """What became of the run in `run_dir` (config.toml, no metrics.json), and how it goes on: "is training in
    another process", or was killed or interrupted after its checkpoint's epoch, or before its first checkpoint."""
    if held(run_dir):
        return "is training in another process"
    after = after_checkpoint(run_dir)
    if after is None:
        return f"was killed before its first checkpoint: `dltune train --resume {run_dir}` trains it again from epoch 1"
    return f"was killed or interrupted {after}"


def after_checkpoint(run_dir: Path) -> str | None:
    """"after epoch K of N: `dltune train --resume RUN_DIR` goes on from there" for a run folder with a checkpoint;
    None without one."""
    epoch = checkpoint_epoch(run_dir)
    if epoch is None:
        return None
    return f"after epoch {epoch}{_of_epochs(run_dir)}: `dltune train --resume {run_dir}` goes on from there"


def _of_epochs(run_dir: Path) -> str:
    """" of N" for a run folder whose config.toml says train.epochs = N; "" where it cannot be read."""
    try:
        return f" of {tomllib.loads((run_dir / 'config.toml').read_text(encoding='utf-8'))['train']['epochs']}"
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError):
        return ""


def recorded_result(run_dir: str | Path) -> dict[str, Any]:
    """A finished run's JSON document, as RunResult.to_dict() gave it, read back from its folder (metrics.json, its
    environment and config)."""
    run_dir = Path(run_dir)
    document = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    environment = run_dir / "environment.json"
    document["environment"] = json.loads(environment.read_text(encoding="utf-8")) if environment.is_file() else {}
    document["config"] = load_config(run_dir / "config.toml").model_dump(mode="json")
    return document


def complete_run(run_dir: str | Path) -> bool:
    """Whether `run_dir` holds a whole run (metrics.json). The checkpoint that a process killed as it ended may have
    left beside it is removed, unless a process holds the folder."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").exists():
        return False
    if (run_dir / CHECKPOINT).exists() and not held(run_dir):
        shutil.rmtree(run_dir / CHECKPOINT, ignore_errors=True)
    return True


@contextmanager
def _resumable(run_dir: Path, config: ExperimentConfig) -> Iterator[None]:
    """Hold a run folder that can be resumed, after checking that it can: refused with the reason otherwise."""
    if not (run_dir / "config.toml").is_file():
        raise ConfigError(f"--resume {run_dir}: not a run folder (no config.toml)")
    if (run_dir / "metrics.json").exists():
        raise ConfigError(f"--resume {run_dir}: the run is complete (metrics.json); nothing to resume")
    with checkpoint_lock(run_dir):
        for stray in run_dir.glob(".*.tmp"):  # a file the killed process was writing (files.temp_file), never renamed
            stray.unlink(missing_ok=True)
        if (run_dir / "metrics.json").exists():  # another process finished it meanwhile
            raise ConfigError(f"--resume {run_dir}: the run is complete (metrics.json); nothing to resume")
        if (run_dir / "config.toml").read_text(encoding="utf-8") != to_toml(config):
            raise ConfigError(f"--resume {run_dir}: the experiment differs from the run's config.toml; a run goes on "
                              "only as it started (dltune train --resume RUN_DIR reads that file)")
        yield


def _refuse_run(run_dir: Path, flag: str) -> None:
    if (run_dir / "metrics.json").exists():
        raise ConfigError(f"{flag}{run_dir}: already holds a run (metrics.json); choose another folder")
    if (run_dir / "config.toml").exists():
        other = "; choose another folder" if held(run_dir) else ", or choose another folder"
        raise ConfigError(f"{flag}{run_dir}: holds a run that {unfinished(run_dir)}{other}")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{flag}{run_dir}: is a file, not a folder")


@contextmanager
def output_folder(out: Path) -> Iterator[Path]:
    """The output folder of a study, created and proved writable (ensure_writable); if the block raises before
    anything was written, a folder created here is removed again: bad input leaves nothing behind."""
    fresh = not out.exists()
    ensure_writable(out)
    try:
        yield out
    except BaseException:
        if fresh and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def ensure_writable(out: Path) -> None:
    """Create the output folder `out` and prove that files can be written there, before any work."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write there ({e.strerror})") from None
