"""Finders: the learning-rate range test, the batch-size finder and the loader / thread tuner.

Each works on copies (a fresh, seeded model; a deep copy of a model it is given) and restores torch's
global state, then returns a number with its evidence: the curve, the timings.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dltune.data import LoaderSplits, TensorSplits, batch_bytes, to_device
from dltune.errors import ConfigError
from dltune.experiment.config import ExperimentConfig, load_config, override
from dltune.run.assembly import Data, Model, Setup, batcher, setup
from dltune.run.checks import check
from dltune.run.evaluation import length
from dltune.run.runtime import torch_settings, torch_state_kept
from dltune.techniques.optim import build_optimizer
from dltune.tuner.lr_rules import AGREEMENT, SHOWN, curve_rules, doubts, rule_for, trimmed

__all__ = ["BatchFindResult", "LRFindResult", "LoaderFindResult", "batch_find", "loader_find", "lr_find",
           "step_memory"]


# --- the learning-rate range test ---------------------------------------------------------------------

@dataclass(frozen=True)
class LRFindResult:
    lrs: list[float]  # the lr of every step taken
    losses: list[float]  # raw training loss per step
    smoothed: list[float]  # bias-corrected exponential moving average of the loss
    suggestions: dict[str, float]  # rule -> lr: steepest, valley, min/10, min/3, min/2, geo(...) (lr_rules.SHOWN)
    suggested: float | None  # the lr of `rule`, unless the curve shows no descent or is too noisy
    spread_decades: float  # log10(max / min) over steepest, valley, min/10, min/3 (lr_rules.AGREEMENT)
    confident: bool
    reasons: list[str]  # why not confident (lr_rules.doubts): no descent, too noisy, diverged at once, ...
    stopped_early: bool  # the smoothed loss passed `diverge` × its best
    rule: str | None = None  # the rule of `suggested`: lr_rules.rule_for(the schedule, stopped_early)

    def to_use(self, current: float) -> tuple[float, str]:
        """The lr to train at and why: the suggestion where the test is confident; elsewhere the fallback,
        `current` (the experiment's optim.lr, dltune's default 1e-3 where the file sets none), instead of a guess:
        where it was not confident the suggestion missed the best lr of a grid by points (bench_lr_find,
        bench_suite)."""
        if self.confident and self.suggested is not None:
            return self.suggested, f"the lr range test's suggestion ({self.rule} rule)"
        return current, f"the lr range test was not confident ({'; '.join(self.reasons)}): optim.lr kept"


def lr_find(config: ExperimentConfig | str | Path, *, min_lr: float = 1e-7, max_lr: float = 10.0, steps: int = 100,
            mode: Literal["exp", "linear"] = "exp", beta: float = 0.9, diverge: float = 4.0,
            model: Model | None = None, data: Data | None = None) -> LRFindResult:
    """Train for up to `steps` steps with the lr swept from `min_lr` to `max_lr` (exponentially or linearly),
    smoothing the loss by a bias-corrected moving average with factor `beta`; stop when it exceeds
    `diverge` × its best. Suggestions: steepest descent against log lr, the valley rule, the lowest loss's lr / 10,
    / 3 and / 2, and the geometric mean of steepest and min/10; the suggested lr is the rule that `lr_rules.rule_for`
    picks for the config's schedule and the curve (chosen by the test accuracy that training at it reaches:
    benchmarks/bench_lr_find.py)."""
    config = _config(config, data, model)
    if not 0 < min_lr < max_lr:
        raise ConfigError(f"--min-lr / --max-lr: need 0 < min_lr < max_lr, got {min_lr} and {max_lr}")
    if steps < 10:
        raise ConfigError(f"--steps: at least 10, got {steps}")
    with _restored(config, data, model) as run:
        net = run.model  # a fresh copy: the caller's model is not trained
        optimizer = build_optimizer(config.optim, net.parameters())
        batches = _cycle(batcher(run.splits, config, run.device), config.batch.size)
        ratio = max_lr / min_lr
        lrs, losses, smoothed = [], [], []
        avg, best, stopped = 0.0, math.inf, False
        net.train()
        for i in range(steps):
            t = i / (steps - 1)
            lr = min_lr * ratio**t if mode == "exp" else min_lr + (max_lr - min_lr) * t
            for group in optimizer.param_groups:
                group["lr"] = lr
            # the user's step (model.step), or [loss] of model(x) and y, in train.precision
            loss = run.loss_of(net, next(batches))
            optimizer.zero_grad(set_to_none=True)
            _backward_step(run, loss, optimizer)
            value = loss.item()
            avg = beta * avg + (1 - beta) * value
            debiased = avg / (1 - beta ** (i + 1))
            lrs.append(lr)
            losses.append(value)
            smoothed.append(debiased)
            best = min(best, debiased)
            if not math.isfinite(debiased) or (i > 0 and debiased > diverge * best):
                stopped = True
                break
    return _suggest(lrs, losses, smoothed, stopped, steps, config.schedule.name)


def _suggest(lrs: list[float], losses: list[float], smoothed: list[float], stopped: bool, steps: int,
             schedule: str) -> LRFindResult:
    finite = [i for i, v in enumerate(smoothed) if math.isfinite(v)]
    n = len(finite)
    if n < 5 or (stopped and n < 0.1 * steps):
        reasons = [f"diverged at once (after {len(lrs)} of {steps} steps)"]
        rule = rule_for(schedule, stopped)
        return LRFindResult(lrs, losses, smoothed, {}, None, math.inf, False, reasons, stopped, rule)
    lr, s = trimmed(np.array([lrs[i] for i in finite]), np.array([smoothed[i] for i in finite]))
    suggestions = curve_rules(lr, s, SHOWN)
    agreeing = {name: suggestions[name] for name in AGREEMENT}
    spread = math.log10(max(agreeing.values()) / min(agreeing.values()))
    rule = rule_for(schedule, stopped)
    reasons = doubts(lr, s, np.array([losses[i] for i in finite])[:len(s)], agreeing, stopped)
    blocking = [r for r in reasons if r.startswith(("no descent", "too noisy"))]
    suggested = None if blocking else curve_rules(lr, s, [rule])[rule]
    return LRFindResult(lrs, losses, smoothed, suggestions, suggested, spread, not reasons, reasons, stopped, rule)


# --- the batch-size finder -------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchFindResult:
    mode: str  # throughput | memory
    sizes: list[int]
    samples_per_second: dict[int, float]  # throughput mode: per batch size
    memory_bytes: dict[int, int]  # memory mode: per batch size tried
    chosen: int
    budget_bytes: int | None = None
    lr: float | None = None  # the lr rescaled for the chosen batch (--couple-lr)
    lr_find: LRFindResult | None = None


def batch_find(config: ExperimentConfig | str | Path, *, mode: Literal["throughput", "memory"] = "throughput",
               sizes: list[int] | None = None, memory_budget: int | None = None, max_size: int = 65536,
               steps: int = 10, tolerance: float = 0.05, couple_lr: Literal["linear", "sqrt"] | None = None,
               rerun_lr: bool = False, min_steps: int = 1, model: Model | None = None,
               data: Data | None = None) -> BatchFindResult:
    """Throughput mode: samples/s per batch size (median of timed steps after warm-up), choosing the
    smallest batch within `tolerance` of the best; only sizes that leave `min_steps` optimizer steps per
    epoch are tried (the smallest is tried anyway). Memory mode: the largest batch that fits (doubling,
    then binary search) — CUDA out of memory on a GPU, `memory_budget` bytes of `step_memory` on the CPU."""
    config = _config(config, data, model)
    with _restored(config, data, model) as run:
        net = run.model
        n_train = length(run.splits.train)
        if mode == "throughput":
            sizes = sizes or [s for s in (16, 32, 64, 128, 256, 512, 1024, 2048)
                              if s == 16 or s * min_steps <= n_train]
            speed = {b: _throughput(run, net, config, b, steps) for b in sizes}
            best = max(speed.values())
            chosen = min(b for b, v in speed.items() if v >= (1 - tolerance) * best)
            result = BatchFindResult("throughput", sizes, speed, {}, chosen)
        else:
            if memory_budget is None and run.device.type != "cuda":
                raise ConfigError("--memory-budget: on the CPU, memory mode needs a budget in bytes (e.g. 2e9)")
            memory: dict[int, int] = {}

            def fits(b: int) -> bool:
                try:
                    used = step_memory(run, net, config, b)
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    return False
                memory[b] = used
                return memory_budget is None or used <= memory_budget

            chosen = _largest(fits, min(max_size, n_train))
            result = BatchFindResult("memory", sorted(memory), {}, memory, chosen, memory_budget)
    if couple_lr is not None:
        scale = chosen / config.batch.size
        lr = config.optim.lr * (scale if couple_lr == "linear" else math.sqrt(scale))
        found = lr_find(override(config, {"batch.size": chosen, "optim.lr": lr}), model=model, data=data) \
            if rerun_lr else None
        result = BatchFindResult(result.mode, result.sizes, result.samples_per_second, result.memory_bytes,
                                 chosen, result.budget_bytes, lr, found)
    return result


def _largest(fits: Any, limit: int) -> int:
    """The largest b <= limit with fits(b), for a monotone fits: doubling from 1, then binary search."""
    if not fits(1):
        raise ConfigError("no batch size fits, not even 1")
    low = 1
    while low * 2 <= limit and fits(low * 2):
        low *= 2
    high = min(low * 2, limit + 1)  # fits(low) and not fits(high) (or past the limit)
    while high - low > 1:
        mid = (low + high) // 2
        if fits(mid):
            low = mid
        else:
            high = mid
    return low


def _batch(run: Setup, b: int) -> Any:
    """A training batch of `b` examples (repeated where the split has fewer), as the loop would give it."""
    splits = run.splits
    if isinstance(splits, TensorSplits):
        x, y = splits.train
        idx = torch.arange(b) % len(y)
        return x[idx].to(run.device), y[idx].to(run.device)
    if isinstance(splits, LoaderSplits):  # the user's own batches: as their collate_fn makes them
        dataset = splits.train.dataset
        rows = [i % len(dataset) for i in range(b)]  # type: ignore[arg-type]
        return to_device(splits.train.collate_fn([dataset[i] for i in rows]), run.device)
    xb, yb = next(iter(DataLoader(splits.train, batch_size=b, shuffle=False)))
    return xb.float().to(run.device), yb.to(run.device)


def step_memory(run: Setup, model: nn.Module, config: ExperimentConfig, b: int) -> int:
    """Bytes one training step at batch `b` needs: parameters, gradients and optimizer state, the batch,
    and every tensor autograd saves for the backward pass (the activations) — or, on CUDA, the
    allocator's measured peak."""
    net = copy.deepcopy(model)
    optimizer = build_optimizer(config.optim, net.parameters())
    batch = _batch(run, b)
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
        _step(run, net, optimizer, batch)
        return int(torch.cuda.max_memory_allocated(run.device))
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _step(run, net, optimizer, batch)
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if isinstance(t, torch.Tensor))
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    return int(sum(saved) + 2 * params + state + batch_bytes(batch))


def _step(run: Setup, net: nn.Module, optimizer: torch.optim.Optimizer, batch: Any) -> None:
    net.train()
    loss = run.loss_of(net, batch)
    optimizer.zero_grad(set_to_none=True)
    _backward_step(run, loss, optimizer)


def _backward_step(run: Setup, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    """Backward and the optimizer's step as the run takes them in train.precision (fp16: through a GradScaler)."""
    run.precision.backward(loss)
    run.precision.step(optimizer)


def _throughput(run: Setup, model: nn.Module, config: ExperimentConfig, b: int, steps: int) -> float:
    net = copy.deepcopy(model)
    optimizer = build_optimizer(config.optim, net.parameters())
    batch = _batch(run, b)
    for _ in range(3):  # warm-up: allocations, kernel choice
        _step(run, net, optimizer, batch)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        _step(run, net, optimizer, batch)
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        times.append(time.perf_counter() - start)
    return b / float(np.median(times))


# --- the loader and thread tuner ------------------------------------------------------------------------

@dataclass(frozen=True)
class LoaderFindResult:
    rows: list[dict[str, Any]] = field(default_factory=list)  # {"path", "workers", "threads", "epoch_seconds"}
    best: dict[str, Any] = field(default_factory=dict)


def loader_find(config: ExperimentConfig | str | Path, *, workers: list[int] | None = None,
                threads: list[int] | None = None, repeats: int = 3, model: Model | None = None,
                data: Data | None = None) -> LoaderFindResult:
    """Epoch time (median of `repeats`) of dltune's in-memory batching per torch thread count, and of a
    torch DataLoader over the same examples per worker count and thread count; the fastest is recommended.
    Workers change how fast batches arrive, never which batches: they cannot change accuracy."""
    config = _config(config, data, model)
    if repeats < 1:
        raise ConfigError(f"--repeats: at least 1 timed epoch per setting, got {repeats}")
    cores = torch.get_num_threads()
    threads = threads or sorted({1, cores})
    workers = workers if workers is not None else [0, 1, 2]
    rows: list[dict[str, Any]] = []
    with _restored(config, data, model) as run:
        if not isinstance(run.splits, TensorSplits):
            raise ConfigError("loader-find: needs data held in memory (a dataset of the registry, or arrays)")
        x, y = run.splits.train
        for t in threads:
            torch.set_num_threads(t)
            rows.append({"path": "in-memory", "workers": None, "threads": t,
                         "epoch_seconds": _epoch_time(run, config, batcher(run.splits, config, run.device), repeats)})
            for w in workers:
                loader = DataLoader(TensorDataset(x, y), batch_size=config.batch.size, shuffle=True, num_workers=w,
                                    persistent_workers=False)
                seconds = _epoch_time(run, config, lambda size, loader=loader: iter(loader), repeats)
                rows.append({"path": "DataLoader", "workers": w, "threads": t, "epoch_seconds": seconds})
    best = min(rows, key=lambda r: r["epoch_seconds"])
    return LoaderFindResult(rows, best)


def _epoch_time(run: Setup, config: ExperimentConfig, batches: Any, repeats: int) -> float:
    net = copy.deepcopy(run.model)
    optimizer = build_optimizer(config.optim, net.parameters())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for xb, yb in batches(config.batch.size):
            _step(run, net, optimizer, (xb.to(run.device), yb.to(run.device)))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


# --- shared ---------------------------------------------------------------------------------------------

def _config(config: ExperimentConfig | str | Path, data: Data | None = None,
            model: Model | None = None) -> ExperimentConfig:
    config = config if isinstance(config, ExperimentConfig) else load_config(config)
    check(config, user_data=data is not None, user_model=model is not None)
    return config


@contextmanager
def _restored(config: ExperimentConfig, data: Data | None = None, model: Model | None = None) -> Iterator[Setup]:
    """A fresh setup (a copy of a given model), with torch's random state, thread count and determinism put back
    afterwards."""
    with torch_state_kept(rng=True), torch_settings(config):
        yield setup(config, data, model)


def _cycle(batches: Any, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from batches(size)
