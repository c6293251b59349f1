"""The process a run trains in: torch's thread count, determinism and random state, kept and restored, and the
device."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from dltune.config import ExperimentConfig
from dltune.errors import ConfigError

__all__ = ["device_for", "torch_settings", "torch_state_kept"]


def device_for(name: str) -> torch.device:
    """train.device as a torch device: auto is cuda when torch sees one, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda was asked for, but torch sees no CUDA device; use auto or cpu")
    return torch.device(name)


@contextmanager
def torch_settings(config: ExperimentConfig) -> Iterator[None]:
    """Thread count and determinism for the run, restored afterwards. With train.compile and
    train.deterministic, compiled code draws its random numbers (dropout) as eager code does, from torch's
    generator (inductor's fallback_random), so that compiling does not change the run's history."""
    with torch_state_kept():
        if config.parallel.threads is not None:
            torch.set_num_threads(config.parallel.threads)
        torch.use_deterministic_algorithms(config.train.deterministic, warn_only=True)
        if not config.train.compile:
            yield
            return
        import torch._inductor.config as inductor  # only a compiled run pays for the import

        with inductor.patch(fallback_random=config.train.deterministic):
            yield


@contextmanager
def torch_state_kept(rng: bool = False) -> Iterator[None]:
    """torch's process-wide thread count and determinism and, with `rng`, its random state (CPU and CUDA)
    as they were on entry, restored on exit."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if rng else [], enabled=rng):
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
