"""What a compressed model costs and keeps: latency (interleaved across models, medians), size and test metrics."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any, TypedDict

import torch

from dltune.run.metrics import evaluate, mean_interval

__all__ = ["Runner", "Spread", "latencies", "spread", "test_metrics"]

Runner = Callable[[torch.Tensor], Any]  # runs a model on one batch of inputs
SAMPLE_SECONDS = 0.002  # a timed sample repeats a call until it lasts about this long (batch 1 takes microseconds)


def latencies(runners: dict[str, Runner], x: torch.Tensor, batch_sizes: tuple[int, ...], rounds: int,
              threads: int) -> dict[str, dict[str, dict[str, float]]]:
    """Milliseconds per call of each runner at each batch size: median, min and max over `rounds` samples.
    Models take turns within a round (and the order turns each round), so that a noisy moment of a shared machine
    falls on all of them alike. torch runs on `threads` intra-op threads (onnxruntime sessions are made so)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        inputs = {b: x[:b] if b <= len(x) else x.repeat(math.ceil(b / len(x)), *[1] * (x.ndim - 1))[:b]
                  for b in batch_sizes}
        repeats: dict[tuple[str, int], int] = {}
        with torch.inference_mode():
            for name, run in runners.items():  # warm up; how many calls make a sample
                for b, xb in inputs.items():
                    run(xb)
                    start = time.perf_counter()
                    run(xb)
                    repeats[name, b] = max(1, math.ceil(SAMPLE_SECONDS / max(time.perf_counter() - start, 1e-7)))
            samples: dict[tuple[str, int], list[float]] = {key: [] for key in repeats}
            names = list(runners)
            for r in range(rounds):
                for b, xb in inputs.items():
                    for name in names[r % len(names):] + names[:r % len(names)]:
                        n = repeats[name, b]
                        start = time.perf_counter()
                        for _ in range(n):
                            runners[name](xb)
                        samples[name, b].append((time.perf_counter() - start) * 1000 / n)
    finally:
        torch.set_num_threads(before)
    return {name: {str(b): {"median_ms": statistics.median(samples[name, b]), "min_ms": min(samples[name, b]),
                            "max_ms": max(samples[name, b])} for b in batch_sizes} for name in runners}


def test_metrics(outputs: torch.Tensor, targets: torch.Tensor, task: str, target_scale: tuple[float, float],
                 threshold: float | None) -> dict[str, float]:
    return evaluate(task, outputs.float(), targets, target_scale, threshold)


class Spread(TypedDict):
    """A test metric over seeds (None where there is one value)."""

    mean: float
    std: float | None
    ci_low: float | None
    ci_high: float | None
    n: int


def spread(values: list[float]) -> Spread:
    """Mean, sample standard deviation and the 95% t interval of the mean (None where one value), as the ablation
    table computes them."""
    mean, std, low, high = mean_interval(values)
    return {"mean": mean, "std": std, "ci_low": low, "ci_high": high, "n": len(values)}
