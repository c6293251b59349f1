"""The one training loop: train(config, on_epoch=None) -> RunResult."""

from __future__ import annotations

import json
import os
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dltune.config import ExperimentConfig, load_config, to_toml
from dltune.data import DATASETS, TensorSplits, TorchSplits, load_data, torch_splits
from dltune.environment import environment
from dltune.errors import ConfigError
from dltune.losses import LOSSES, build_loss, resolve_loss_name
from dltune.metrics import evaluate
from dltune.models import MODELS, build_model, count_parameters
from dltune.optim import OPTIMIZERS, build_optimizer
from dltune.regularization import build_penalty
from dltune.schedules import SCHEDULES, build_schedule

__all__ = ["RunResult", "check", "prepare_run_dir", "train", "write_run"]

Status = Literal["completed", "stopped", "diverged"]
OnEpoch = Callable[[int, dict[str, Any]], Any]  # may return "stop"
Splits = TensorSplits | TorchSplits


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
    data: dict[str, Any]
    environment: dict[str, Any]
    run_dir: str | None = None
    model: nn.Module | None = field(default=None, repr=False)

    def metric(self, path: str) -> float:
        """A metric by dotted path: "test.accuracy", or "val.loss" / "train.loss" of the last epoch."""
        split, _, name = path.partition(".")
        source = self.test if split == "test" else (self.epochs[-1].get(split, {}) if self.epochs else {})
        if name not in source:
            known = [f"test.{k}" for k in self.test] + [f"{s}.{k}" for s in ("train", "val")
                                                        for k in (self.epochs[-1].get(s) or {} if self.epochs else {})]
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
            "run_dir": self.run_dir,
            "data": self.data,
            "environment": self.environment,
            "config": self.config.model_dump(mode="json"),
        })


def check(config: ExperimentConfig, *, user_data: bool = False) -> None:
    """Reject unknown registry names before any work (each error names its path)."""
    if not user_data:
        DATASETS.get(config.data.name, path="data.name")
    MODELS.get(config.model.name, path="model.name")
    OPTIMIZERS.get(config.optim.name, path="optim.name")
    SCHEDULES.get(config.schedule.name, path="schedule.name")
    if config.loss.name != "auto":
        LOSSES.get(config.loss.name, path="loss.name")


def train(
    config: ExperimentConfig | str | Path,
    on_epoch: OnEpoch | None = None,
    *,
    data: Dataset | Splits | None = None,
    out_dir: str | Path | None = None,
) -> RunResult:
    """Train one model as `config` says and evaluate it on the test split.

    `on_epoch(epoch, record)` is called after every epoch (1-based) with that epoch's record;
    returning "stop" ends the run with status "stopped" (how a search prunes). A loss that
    becomes NaN or infinite ends it with status "diverged". `data` replaces data.name with a
    torch Dataset (split by the [data] fractions) or ready splits. With `out_dir`, the run's
    config, metrics, weights and environment are written there.
    """
    if not isinstance(config, ExperimentConfig):
        config = load_config(config)
    check(config, user_data=data is not None)
    device = _device(config.train.device)
    with _torch_settings(config):
        splits = _splits(config, data)
        loss_name = resolve_loss_name(config.loss, splits.task)
        loss_fn = build_loss(config.loss, splits.task)
        torch.manual_seed(config.train.seed)
        model = build_model(config.model, splits.input_shape, splits.n_outputs).to(device)
        result = _fit(config, splits, model, loss_fn, device, on_epoch)
        result.data = {**splits.info, "loss": loss_name}
        result.environment = environment(str(device))
    if out_dir is not None:
        write_run(result, out_dir)
    return result


def _fit(config: ExperimentConfig, splits: Splits, model: nn.Module, loss_fn: Callable,
         device: torch.device, on_epoch: OnEpoch | None) -> RunResult:
    cfg = config
    optimizer = build_optimizer(cfg.optim, model.parameters())
    penalty = build_penalty(cfg.regularization, model)
    batches = _batcher(splits, cfg, device)
    n_train = _length(splits.train)
    steps_per_epoch = math.ceil(n_train / cfg.batch.size)
    schedule = build_schedule(cfg.schedule, optimizer, steps_per_epoch, cfg.train.epochs)

    status: Status = "completed"
    history: list[dict[str, Any]] = []
    train_seconds = 0.0
    for epoch in range(1, cfg.train.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        model.train()
        total_loss = torch.zeros((), device=device)
        total_penalty = torch.zeros((), device=device)
        start = time.perf_counter()
        for xb, yb in batches():
            loss = loss_fn(model(xb), yb)
            total_loss += loss.detach() * len(yb)
            if penalty is not None:
                p = penalty()
                total_penalty += p.detach() * len(yb)
                loss = loss + p
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if schedule.per == "batch" and schedule.scheduler is not None:
                schedule.scheduler.step()
        train_loss = total_loss.item() / n_train  # .item() also waits for an asynchronous device
        seconds = time.perf_counter() - start
        train_seconds += seconds

        record: dict[str, Any] = {"epoch": epoch, "train": {"loss": train_loss}}
        if penalty is not None:
            record["train"]["penalty"] = total_penalty.item() / n_train
        eval_start = time.perf_counter()
        if splits.val is not None and math.isfinite(train_loss):
            record["val"] = _evaluate(model, splits.val, splits, loss_fn, cfg, device)
        record.update(lr=lr, batch_size=cfg.batch.size, seconds=seconds,
                      eval_seconds=time.perf_counter() - eval_start, samples_per_second=n_train / seconds)
        history.append(record)
        if not math.isfinite(train_loss):
            status = "diverged"
            break
        if schedule.per == "epoch" and schedule.scheduler is not None:
            schedule.scheduler.step()
        if on_epoch is not None and on_epoch(epoch, record) == "stop":
            status = "stopped"
            break

    test = {} if status == "diverged" else _evaluate(model, splits.test, splits, loss_fn, cfg, device)
    n_seen = sum(n_train for _ in history)
    return RunResult(
        status=status, epochs=history, test=test, train_seconds=train_seconds,
        samples_per_second=n_seen / train_seconds if train_seconds > 0 else 0.0,
        parameters=count_parameters(model), config=config, data={}, environment={}, model=model,
    )


def _batcher(splits: Splits, cfg: ExperimentConfig, device: torch.device) -> Callable[[], Iterator[tuple]]:
    """A function that yields one epoch of shuffled training batches on `device`."""
    generator = torch.Generator().manual_seed(cfg.train.seed)  # batch order, apart from dropout's stream
    size = cfg.batch.size
    if isinstance(splits, TensorSplits):
        x, y = (t.to(device) for t in splits.train)

        def tensor_epoch() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            order = torch.randperm(len(y), generator=generator).to(device)
            for i in range(0, len(y), size):
                idx = order[i : i + size]
                yield x[idx], y[idx]

        return tensor_epoch
    loader = DataLoader(splits.train, batch_size=size, shuffle=True, generator=generator,
                        num_workers=cfg.parallel.workers, persistent_workers=cfg.parallel.workers > 0,
                        pin_memory=device.type == "cuda")

    def loader_epoch() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for xb, yb in loader:
            yield _on(xb, yb, splits.task, device)

    return loader_epoch


def _on(xb: torch.Tensor, yb: torch.Tensor, task: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    yb = yb.float() if task == "regression" else yb.long()
    return xb.float().to(device, non_blocking=True), yb.to(device, non_blocking=True)


@torch.no_grad()
def _evaluate(model: nn.Module, part: tuple | Dataset, splits: Splits, loss_fn: Callable,
              cfg: ExperimentConfig, device: torch.device) -> dict[str, float]:
    """Loss (mean over examples) and the task's metrics on one split."""
    model.eval()
    if isinstance(part, tuple):
        x, y = part
        chunks = ((x[i : i + cfg.batch.eval_size], y[i : i + cfg.batch.eval_size])
                  for i in range(0, len(y), cfg.batch.eval_size))
    else:
        chunks = DataLoader(part, batch_size=cfg.batch.eval_size, num_workers=cfg.parallel.workers)
    outputs, targets = [], []
    for xb, yb in chunks:
        xb, yb = _on(xb, yb, splits.task, device)
        outputs.append(model(xb))
        targets.append(yb)
    out, target = torch.cat(outputs), torch.cat(targets)
    loss = loss_fn(out, target).item()
    model.train()
    if not math.isfinite(loss) or not torch.isfinite(out).all():
        return {"loss": loss}
    return {"loss": loss, **evaluate(splits.task, out, target, splits.target_scale)}


def _splits(config: ExperimentConfig, data: Dataset | Splits | None) -> Splits:
    if data is None:
        return load_data(config.data)
    if isinstance(data, (TensorSplits, TorchSplits)):
        return data
    if isinstance(data, Dataset):
        return torch_splits(data, config.data)
    raise TypeError(f"data must be a torch Dataset, TensorSplits or TorchSplits, not {type(data).__name__}")


def _length(part: tuple | Dataset) -> int:
    return len(part[1]) if isinstance(part, tuple) else len(part)  # type: ignore[arg-type]


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda was asked for, but torch sees no CUDA device; use auto or cpu")
    return torch.device(name)


@contextmanager
def _torch_settings(config: ExperimentConfig) -> Iterator[None]:
    """Thread count and determinism for the run, restored afterwards."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        if config.parallel.threads is not None:
            torch.set_num_threads(config.parallel.threads)
        torch.use_deterministic_algorithms(config.train.deterministic, warn_only=True)
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


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


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


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
