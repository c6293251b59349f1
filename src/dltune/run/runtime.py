"""The process a run trains in: torch's thread count, determinism and random state, kept and restored, the device,
the memory that runs have freed, and the cores and the load of the machine it shares."""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from dltune.errors import ConfigError
from dltune.experiment.config import ExperimentConfig

__all__ = ["CUBLAS_WORKSPACE", "Load", "cores", "crowding", "device_for", "pin_worker", "quiet_logger", "read_load",
           "release_freed_memory", "torch_settings", "torch_state_kept", "warn_if_crowded", "worker_device",
           "worker_devices"]

# cuBLAS's workspace that gives the same bits from run to run (NVIDIA's cuBLAS docs, "Results reproducibility"): 8
# buffers of 4 MiB, "approximately 24MiB" more GPU memory by torch's own warning; ":16:8" does it in less memory, at
# some speed, and a user who sets it keeps it
CUBLAS_WORKSPACE = ":4096:8"


def cores() -> int:
    """The cores this process may run on (its CPU affinity, which taskset or a container's cpuset narrow), which
    `--jobs` divides into torch threads; os.cpu_count() where the affinity cannot be read."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Load:
    """How busy the machine is: the load average of the last minute, and the processes running now besides this
    one (Linux: /proc/loadavg's running count, less this process, over a few reads)."""

    average: float
    running: float


def read_load() -> Load | None:
    """The machine's Load; None where the system does not say."""
    try:
        average = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    counts = []
    for _ in range(5):  # 5 reads 10 ms apart: the count of one instant jumps as processes come and go
        try:
            with open("/proc/loadavg") as f:
                counts.append(int(f.read().split()[3].split("/")[0]) - 1)  # this process, which reads, runs too
        except (OSError, IndexError, ValueError):
            return Load(average, average)  # not Linux: the average alone
        time.sleep(0.01)
    return Load(average, max(0.0, sum(counts) / len(counts)))


def crowding(load: Load, cores: int, threads: int) -> str | None:
    """A warning when other processes hold the cores that `threads` torch threads will use, by the last minute's
    load average and the processes running now (both: the average lags a load that has ended, the count of one
    moment catches a burst); None when they leave the threads their cores. Torch's threads meet at every operation,
    so one thread that waits for a core holds up the others."""
    others = min(load.average, load.running)
    free = cores - others
    if threads <= 1 or threads <= free + 0.5:
        return None
    fewer = max(1, math.floor(free))
    return (f"warning: the load average is {load.average:.1f} on {cores} cores ({load.running:.1f} processes running "
            f"besides this one): other processes hold the cores that torch's {threads} threads will use, and torch's "
            "threads wait for each other at every operation, so training can be many times slower. Try --set "
            f"parallel.threads={fewer} (or fewer --jobs). dltune leaves the thread count as it is set: another count "
            "adds floats in another order, and a seed gives the same bits only at the same count.")


@contextmanager
def quiet_logger(name: str | None) -> Iterator[None]:
    """The logger `name` (None: the root) says errors only for the block, and afterwards what it said before (a
    library's noise, kept out of dltune's output). A level left raised on the root would silence every logger
    without its own level for the rest of the process, dltune's warnings among them."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


_WARNED: set[str] = set()  # warn_if_crowded: this process has warned


def warn_if_crowded(threads: int, device: torch.device) -> None:
    """Before a run trains with `threads` torch threads (in all) on `device`, the CPU: crowding()'s warning, logged
    (logger "dltune"; the CLI prints it on stderr), once per process: a search's trials train one after another in
    one process, and one warning says it for all of them. The thread count stays as it is set."""
    if threads <= 1 or device.type != "cpu" or _WARNED:
        return
    try:  # the load average alone first: where it leaves the cores free, nothing more is read
        if crowding(Load(os.getloadavg()[0], math.inf), cores(), threads) is None:
            return
    except (AttributeError, OSError):
        return
    load = read_load()
    advice = None if load is None else crowding(load, cores(), threads)
    if advice is not None:
        _WARNED.add(advice)
        logging.getLogger("dltune").warning(advice)


def device_for(name: str) -> torch.device:
    """train.device as a torch device: auto is cuda when torch sees one, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"train.device: {name} was asked for, but torch sees no CUDA device; use auto or cpu")
        index = int(name.partition(":")[2] or 0)
        if index >= count:
            raise ConfigError(f"train.device: {name} was asked for, but torch sees {count} CUDA device(s) "
                              f"(cuda:0 .. cuda:{count - 1})")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device: mps was asked for, but torch has no MPS device here (Apple silicon with a "
                          "torch built for it); use auto or cpu")
    return torch.device(name)


def worker_device(setting: str, worker: int, gpus: int) -> str | None:
    """The GPU that worker `worker` (from 0) of a command's processes trains on, where train.device is `setting`
    and the machine has `gpus` CUDA devices: cuda:(worker mod gpus) for "auto" or "cuda" on two GPUs or more, so
    that the workers share the cards round-robin instead of all training on cuda:0. None: the device stays as set
    (cpu, mps, an explicit cuda:N, or a machine of one GPU or none)."""
    if setting not in ("auto", "cuda") or gpus < 2:
        return None
    return f"cuda:{worker % gpus}"


def worker_devices(settings: Iterable[str], jobs: int) -> list[str | None]:
    """worker_device for each of `jobs` worker processes on this machine, whose runs train on the train.device
    `settings` (an ablation's baseline and variants): a card of its own where any of them is auto or cuda. Each card
    given is said in a line, "worker 2 of 4: cuda:1 (NVIDIA H100 80GB HBM3)", logged at INFO (logger
    "dltune.devices"; the CLI prints it)."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    wanted = list(settings)
    devices = [next((d for s in wanted if (d := worker_device(s, k, gpus)) is not None), None) for k in range(jobs)]
    log = logging.getLogger("dltune.devices")
    for k, device in enumerate(devices):
        if device is not None:
            log.info(f"worker {k + 1} of {jobs}: {device}{_card_name(device)}")
    return devices


def _card_name(device: str) -> str:
    try:
        return f" ({torch.cuda.get_device_name(torch.device(device))})"
    except (RuntimeError, AssertionError, AttributeError):  # a driver that does not say
        return ""


def pin_worker(device: str | None) -> None:
    """In a worker process, before it trains: make `device` (a worker_devices entry) the card that "cuda" and
    "auto" mean here (torch.cuda.set_device), so that its runs' configs, and the study's fingerprint, stay as the
    experiment says; None leaves the process as it is. The process is the command's own, so the setting stays."""
    if device is not None:
        torch.cuda.set_device(torch.device(device))


@contextmanager
def torch_settings(config: ExperimentConfig) -> Iterator[None]:
    """Thread count and determinism for the run, restored afterwards. With train.compile and
    train.deterministic, compiled code draws its random numbers (dropout) as eager code does, from torch's
    generator (inductor's fallback_random), so that compiling does not change the run's history.

    train.deterministic on a GPU: besides torch.use_deterministic_algorithms, cuDNN's benchmark mode is off (it
    times several convolution algorithms and keeps the fastest, which may differ from run to run), and
    CUBLAS_WORKSPACE_CONFIG is set to :4096:8 unless the environment sets it already (a value of the user's is
    kept): without it cuBLAS may split its work differently from run to run where several CUDA streams run. cuBLAS
    reads it when the process first uses it, so it counts where it is set before the process's first CUDA work (a
    run's own process, a worker's); on the CPU it changes nothing. With train.deterministic false, cuDNN's benchmark
    mode is on: the fastest algorithms, and no same bits."""
    with torch_state_kept():
        if config.parallel.threads is not None:
            torch.set_num_threads(config.parallel.threads)
        torch.use_deterministic_algorithms(config.train.deterministic, warn_only=True)
        torch.backends.cudnn.benchmark = not config.train.deterministic
        if config.train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        if not config.train.compile:
            yield
            return
        import torch._inductor.config as inductor  # only a compiled run pays for the import

        with inductor.patch(fallback_random=config.train.deterministic):
            yield


@contextmanager
def torch_state_kept(rng: bool = False) -> Iterator[None]:
    """torch's process-wide thread count, determinism, cuDNN benchmark mode and CUBLAS_WORKSPACE_CONFIG and, with
    `rng`, its random state (CPU and CUDA) as they were on entry, restored on exit."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if rng else [], enabled=rng):
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        elif os.environ.get("CUBLAS_WORKSPACE_CONFIG") != workspace:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace


def release_freed_memory() -> None:
    """Give back to the system the memory that the C allocator holds free (glibc's malloc_trim; elsewhere nothing).

    A search trains each trial in a thread of its own (ASHA pauses it there), and glibc's malloc serves each thread
    from an arena of its own that keeps what is freed in it: the shuffled copy of the training set that every epoch
    makes, the trial's model when it ends. Reused in ever other places, these arenas grow: the RSS of a search of
    200 short trials on mnist-5k grew to 1.3 GiB, the tensors alive staying under 200 MiB. Called once a trial
    pauses or ends, it keeps that RSS flat (0.2 ms, or tens of ms when much was freed)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # the C library this process runs on: glibc has it, others do not
    except (AttributeError, OSError, TypeError):
        return None
