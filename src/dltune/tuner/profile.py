"""`dltune profile`: where a training step's time goes, measured on the experiment as configured: the step's phases
as the loop takes them, the operators torch.profiler sees, the throughput, memory and matmul efficiency it reaches,
and advice that was measured by running each changed setting (profile_advice), not guessed.

The phases are timed around each part of a pass of steps, and the step itself on the same steps with no timer inside
it, the two taken in turns step by step, so that the report says how well the phases account for the step (their
sum against the step)."""

from __future__ import annotations

import contextlib
import math
import os
import re
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dltune.data import LoaderSplits, TensorSplits
from dltune.errors import ConfigError
from dltune.experiment.config import ExperimentConfig, load_config, override
from dltune.files import atomic_write
from dltune.run.assembly import Data, Model, setup
from dltune.run.checks import check
from dltune.run.evaluation import evaluate_split, length
from dltune.run.precision import DTYPES
from dltune.run.runtime import torch_settings, torch_state_kept, warn_if_crowded
from dltune.tuner.profile_advice import Advice, Situation, Timing, advise, rule_names
from dltune.tuner.profile_steps import WARMUP_STEPS, Steps, compared, flops_of, labelled, passes, sync, untimed

__all__ = ["Operator", "Phase", "ProfileResult", "profile"]

MIN_STEPS = 5  # timed steps: fewer say little more than one step does, whose time another process may have taken
PROFILED_STEPS = 10  # steps under torch.profiler, for the operators and the trace
TOP_OPERATORS = 10
# the side of the square matmul whose FLOP/s is the peak: on 2 CPU cores 1024 reaches within 10% of 2048's rate in
# an eighth of the time; a GPU needs a larger one to fill its cores
PEAK_SIZE = {"cpu": 1024, "cuda": 8192}
# timed matmuls after one warm-up, at least PEAK_REPEATS and until PEAK_SECONDS have passed; the fastest counts (a
# peak is the best the device does: another process's load only ever slows it)
PEAK_REPEATS = 3
PEAK_SECONDS = 0.5


@dataclass(frozen=True)
class Phase:
    """One part of the training step: its mean wall time per step and its share of the phases' sum."""

    name: str
    ms: float
    share: float


@dataclass(frozen=True)
class Operator:
    """One of torch.profiler's operators over the profiled steps: calls and self time per step, and its share of
    all operators' self time."""

    name: str
    calls: float
    self_ms: float
    share: float


@dataclass
class ProfileResult:
    """What `profile` measured (ms per training step throughout)."""

    steps: int  # timed steps of each pass
    batch_size: int
    device: str
    precision: str
    threads: int  # torch's intra-op threads
    phases: list[Phase]
    phases_ms: float  # the phases' sum
    step_ms: float  # the measured step: the mean over a pass with no timer inside it
    step_median_ms: float  # ... the median step of that pass (on CUDA, of the launches: the mean is the step)
    ratio: float  # phases_ms / step_ms: how much of the step the phases account for
    evaluation_ms: float | None  # the validation split's evaluation divided by an epoch's steps (None: no split)
    operators: list[Operator]
    samples_per_second: float
    peak_rss_bytes: int  # the process's largest resident memory so far
    cuda_peak_bytes: int | None  # torch.cuda.max_memory_allocated over the passes (None: not on CUDA)
    flops_per_step: float  # matmul and convolution FLOPs, forward and backward (torch.utils.flop_counter)
    gflops: float  # reached: flops_per_step / the measured step
    peak_gflops: dict[str, float]  # a square matmul's rate, per dtype (fp32, and the run's own)
    peak_dtype: str  # the dtype the run's matmuls compute in, whose peak counts
    peak_share: float  # gflops against that peak
    checks: list[Advice] = field(default_factory=list)  # every advice rule's check, fired or not
    trace: str | None = None  # where the Chrome trace was written

    @property
    def advice(self) -> list[Advice]:
        """The checks that fired."""
        return [a for a in self.checks if a.fired]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "advice": [a.text for a in self.advice]}


def profile(config: ExperimentConfig | str | Path, *, steps: int = 50, trace: str | Path | None = None,
            rules: Sequence[str] | None = None, model: Model | None = None, data: Data | None = None) -> ProfileResult:
    """Train `steps` steps of the experiment as configured (after WARMUP_STEPS) and say where their time goes.

    The phases (batching, augmentation, forward, loss, penalty, backward, clipping, optimizer) are timed around each
    part of every step; the same steps with no timer inside them, taken in turns with those (so that the machine's
    other load falls on both alike), are the measured step, which the phases should add up to. Then:
    torch.profiler's top operators over PROFILED_STEPS steps (`trace`: their Chrome trace, for Perfetto or
    chrome://tracing), the validation split's evaluation per training step, samples/s, peak memory, and the FLOP/s
    reached against a square matmul's, timed here. Last, the advice rules named by `rules` (None: all of
    profile_advice.ORDER) each run their changed setting beside the configured one. Works on a fresh model (a copy of
    `model`); torch's random state, threads and determinism are put back afterwards. One process only."""
    config = config if isinstance(config, ExperimentConfig) else load_config(config)
    check(config, user_data=data is not None, user_model=model is not None)
    if config.parallel.strategy != "none":
        raise ConfigError(f"parallel.strategy: profile times one process; set it to \"none\" (it is "
                          f"{config.parallel.strategy!r}): --set parallel.strategy=none")
    if steps < MIN_STEPS:
        raise ConfigError(f"--steps: at least {MIN_STEPS} timed steps, got {steps}")
    if trace is not None and not Path(trace).parent.is_dir():
        raise ConfigError(f"--trace: {trace}: the folder {Path(trace).parent} does not exist")
    names = rule_names(rules)
    with torch_state_kept(rng=True), torch_settings(config):
        run = setup(config, data, model)
        warn_if_crowded(torch.get_num_threads(), run.device)  # another process's load falls on every timing
        stepper = Steps(config, run)
        result = _measured(stepper, steps, trace)
        splits = run.splits
        situation = Situation(
            config, run.device, any(isinstance(m, nn.Conv2d) for m in run.model.modules()), length(splits.train),
            isinstance(splits, TensorSplits),
            config.parallel.workers or (splits.train.num_workers if isinstance(splits, LoaderSplits) else 0),
            stepper.size, {p.name: p.share for p in result.phases}, result.peak_gflops[result.peak_dtype] * 1e9,
            _comparer(stepper, model), lambda: compared(stepper, stepper, same_batch=True))
        result.checks = advise(situation, names)
    return result


def _measured(stepper: Steps, steps: int, trace: str | Path | None) -> ProfileResult:
    """Everything but the advice, on `stepper`'s setup."""
    device = stepper.run.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    phases, (mean, median, samples_per_second) = passes(stepper, steps)
    flops = flops_of(stepper)
    operators, written = _operators(stepper, min(steps, PROFILED_STEPS), trace)
    evaluation = _evaluation_seconds(stepper)
    name = stepper.precision.name
    dtype = DTYPES[name]
    peak_dtype = name if dtype is not None else "fp32"  # the run's matmuls compute in this one
    peaks = {"fp32": _matmul_rate(device, torch.float32), **({name: _matmul_rate(device, dtype)} if dtype else {})}
    total = sum(phases.values())
    gflops = flops / mean / 1e9
    return ProfileResult(
        steps=steps, batch_size=stepper.size, device=str(device), precision=name, threads=torch.get_num_threads(),
        phases=[Phase(p, s * 1e3, s / total) for p, s in phases.items()], phases_ms=total * 1e3, step_ms=mean * 1e3,
        step_median_ms=median * 1e3, ratio=total / mean,
        evaluation_ms=None if evaluation is None else evaluation * 1e3, operators=operators,
        samples_per_second=samples_per_second, peak_rss_bytes=_peak_rss(),
        cuda_peak_bytes=int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
        flops_per_step=flops, gflops=gflops, peak_gflops={k: v / 1e9 for k, v in peaks.items()},
        peak_dtype=peak_dtype, peak_share=gflops * 1e9 / peaks[peak_dtype],
        trace=None if written is None else str(written))


def _operators(stepper: Steps, steps: int, trace: str | Path | None) -> tuple[list[Operator], Path | None]:
    """torch.profiler's operators with the most self time over `steps` steps (each phase a labelled range in the
    trace), and the Chrome trace written to `trace`."""
    from torch.profiler import ProfilerActivity

    device = stepper.run.device
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    stream = stepper.stream()
    for _ in range(WARMUP_STEPS):
        stepper.step(untimed, stream)
    prof = torch.profiler.profile(activities=activities)
    with _kineto_quiet():
        prof.start()
    try:
        for _ in range(steps):
            stepper.step(labelled, stream)
        sync(device)
    finally:
        with _kineto_quiet():
            prof.stop()
    written = None
    if trace is not None:
        with atomic_write(trace) as tmp:
            prof.export_chrome_trace(str(tmp))
        written = Path(trace)
    events = [e for e in prof.key_averages() if not e.key.startswith(("dltune: ", "ProfilerStep"))]

    def self_us(e: Any) -> float:
        return float(e.self_device_time_total if cuda else e.self_cpu_time_total)

    total = sum(self_us(e) for e in events) or 1.0
    top = sorted(events, key=self_us, reverse=True)[:TOP_OPERATORS]
    return [Operator(e.key, e.count / steps, self_us(e) / 1e3 / steps, self_us(e) / total) for e in top], written


# what torch 2.13's profiler (kineto) writes on stderr at every start and stop, whatever KINETO_LOG_LEVEL says:
# "USDT:2026-01-01 10:00:00 123:123 SyncActivityProfilerHandler.cpp:52] profiler_start"
_KINETO_LINE = re.compile(r"^(USDT|STAGE|INFO|WARNING):\S+ \S+ \d+:\d+ \w+\.cpp:\d+\] ")


@contextlib.contextmanager
def _kineto_quiet() -> Iterator[None]:
    """The block with its stderr (the file descriptor: kineto writes from C++) caught, and written out again
    without kineto's own lines: the profile's output is the report, not the profiler's log."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [line for line in caught.read().decode(errors="replace").splitlines(keepends=True)
                    if not _KINETO_LINE.match(line)]
            sys.stderr.write("".join(kept))


def _evaluation_seconds(stepper: Steps) -> float | None:
    """The validation split's evaluation as the loop runs it after each epoch, divided by an epoch's steps: the
    second of two, since the first pays once for what the process had not yet loaded (the metrics' imports)."""
    run, cfg = stepper.run, stepper.config
    if run.splits.val is None:
        return None
    seconds = []
    for _ in range(2):
        sync(run.device)
        start = time.perf_counter()
        evaluate_split(run.model, run.splits.val, run.splits, run.loss_fn, cfg, run.device, None, run.metrics,
                       run.own, stepper.precision)
        sync(run.device)
        seconds.append(time.perf_counter() - start)
    stepper.model.train()
    return seconds[-1] / math.ceil(length(run.splits.train) / stepper.size)


def _matmul_rate(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a square matmul in `dtype` on `device` at torch's thread count (on CUDA in fp32, TF32 where torch is
    set to allow it, as the run's matmuls are)."""
    n = PEAK_SIZE.get(device.type, 2048)
    a, b = (torch.rand(n, n, device=device).to(dtype) for _ in range(2))
    a @ b  # warm-up
    times: list[float] = []
    while len(times) < PEAK_REPEATS or sum(times) < PEAK_SECONDS:
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times)


def _peak_rss() -> int:
    """The process's largest resident set so far, in bytes (Linux counts ru_maxrss in KiB, macOS in bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


# --- the advice rules' measurements ------------------------------------------------------------------------------

def _comparer(stepper: Steps, model: Model | None) -> Callable[[Mapping[str, Any], bool], tuple[Timing, Timing]]:
    """The advice rules' `compare`: a changed setting on a fresh setup over the same data, beside `stepper`."""

    def compare(overrides: Mapping[str, Any], count_flops: bool) -> tuple[Timing, Timing]:
        config = override(stepper.config, dict(overrides))
        changed = Steps(config, setup(config, stepper.run.splits, model))
        base, other = compared(stepper, changed)
        if count_flops:
            base = Timing(base.step_seconds, base.samples_per_second, flops_of(stepper))
            other = Timing(other.step_seconds, other.samples_per_second, flops_of(changed))
        return base, other

    return compare


