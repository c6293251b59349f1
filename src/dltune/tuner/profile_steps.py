"""The training steps that `dltune profile` times: one step as run.loop takes it, cut into named phases that a clock
times, and the passes over the same batches that time the phases, the whole step, and the advice rules' settings."""

from __future__ import annotations

import contextlib
import itertools
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from dltune.data import batch_length
from dltune.experiment.config import ExperimentConfig
from dltune.run.assembly import Setup, batcher, compiled_for_training, optimizing
from dltune.run.evaluation import length
from dltune.techniques.augment import build_augment
from dltune.techniques.batching import batch_sizes, optimizer_steps
from dltune.techniques.regularization import build_penalty, clip_gradients, decay_weights, penalized_weights
from dltune.tuner.profile_advice import Timing

__all__ = ["ADVICE_STEPS", "WARMUP_STEPS", "Clock", "Lane", "PhaseClock", "Steps", "Stream", "block_of", "compared",
           "flops_of", "labelled", "passes", "run_lanes", "sync", "untimed"]

WARMUP_STEPS = 5  # before any timing: allocations, oneDNN's choice of kernels, a DataLoader's first workers
# rounds of the timed steps, each step keeping its fastest (passes, compared): 5 kept the phases' sum within 4% of
# the step on 2 cores that other processes loaded 2.5 times over (1 round: 12%); no round is begun after
# ROUNDS_SECONDS, since five rounds of a 1-second step would take minutes
ROUNDS = 5
ROUNDS_SECONDS = 20.0
ADVICE_STEPS = 10  # steps of each setting an advice rule compares (after WARMUP_STEPS), in each of ROUNDS rounds
# the schedule's horizon, in optimizer steps per epoch, stretched so that no profile outruns it (OneCycleLR raises
# past its end); the lr's values do not change what a step costs
HORIZON = 100_000


Clock = Callable[[str], contextlib.AbstractContextManager[Any]]  # phase name -> the block that runs it
_NOTHING = contextlib.nullcontext()


def untimed(phase: str) -> contextlib.AbstractContextManager[Any]:
    return _NOTHING


def labelled(phase: str) -> contextlib.AbstractContextManager[Any]:
    """The phase as a range of its own in torch.profiler's trace."""
    return torch.profiler.record_function(f"dltune: {phase}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseClock:
    """A clock that times each phase of each step (a step begins with its batching), the device synchronized at
    each reading (CUDA computes asynchronously: without it, a phase would be charged for the work queued before)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.steps: list[dict[str, float]] = []  # per step: phase -> seconds
        self.phase, self.start = "", 0.0

    def __call__(self, phase: str) -> PhaseClock:
        if phase == "batching":
            self.steps.append({})
        self.phase = phase
        return self

    def __enter__(self) -> None:
        sync(self.device)
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        sync(self.device)
        self.steps[-1][self.phase] = self.steps[-1].get(self.phase, 0.0) + time.perf_counter() - self.start


@dataclass
class Stream:
    """Where a run of steps takes its batches, and how many it took (the optimizer steps every batch.accumulate)."""

    batches: Iterator[Any]
    taken: int = 0


class Steps:
    """Training steps as run.loop takes them (`_Loop._backward`, `_optimizer_step`), each part run in a block of a
    clock: batching (the next batch, on the device), augmentation, forward, loss (with model.step the two are one),
    penalty, backward, clipping (with fp16's unscaling), optimizer (decoupled decay, the step, zero_grad, the
    schedule). The batch size is the first epoch's; with batch.accumulate the optimizer steps every that many."""

    def __init__(self, config: ExperimentConfig, run: Setup) -> None:
        reg = config.regularization
        self.config, self.run, self.model = config, run, run.model
        self.precision = run.precision
        self.size = batch_sizes(config.batch, config.train.epochs)[0]
        per_epoch = optimizer_steps(length(run.splits.train), self.size, config.batch.accumulate)
        self.optimizer, self.schedule, freezer = optimizing(config, self.model,
                                                            [max(per_epoch, HORIZON)] * config.train.epochs)
        freezer.at_epoch(1)
        self.penalty = build_penalty(reg, self.model)
        self.decayed = penalized_weights(self.model, reg.penalize_all) if reg.decoupled_weight_decay > 0 else None
        self.clipping = reg.clip_norm is not None or reg.clip_value is not None
        self.augment = build_augment(reg, run.splits.input_shape, config.train.seed)
        self.stepped = (compiled_for_training(self.model, run, [self.size], length(run.splits.train))[0]
                        if config.train.compile else self.model)
        self.model.train()

    def stream(self, same_batch: bool = False) -> Stream:
        """Batches from the start of a first epoch (the same order each time), or one batch over and over."""
        order = torch.Generator().manual_seed(self.config.train.seed)
        epochs = batcher(self.run.splits, self.config, self.run.device, order)
        return Stream(itertools.repeat(next(epochs(self.size))) if same_batch else _cycle(epochs, self.size))

    def step(self, clock: Clock, stream: Stream) -> int:
        """One batch of `stream` stepped (and the optimizer, every batch.accumulate batches): its examples."""
        run = self.run
        with clock("batching"):
            batch = next(stream.batches)
        if self.augment is not None:
            with clock("augmentation"):
                batch = (self.augment(batch[0]), batch[1])
        if run.own is not None:
            with clock("forward and loss (model.step)"):
                loss = run.loss_of(self.stepped, batch)
        else:  # Setup.loss_of, cut in two
            xb, yb = batch
            with clock("forward"), run.autocast():
                out = run.forward(self.stepped, xb)
            with clock("loss"), run.autocast():
                loss = run.loss_from(out, xb, yb)
        if self.penalty is not None:
            with clock("penalty"):
                loss = loss + self.penalty()
        with clock("backward"):
            self.precision.backward(loss / self.config.batch.accumulate)
        stream.taken += 1
        if stream.taken % self.config.batch.accumulate == 0:
            self._optimizer_step(clock)
        return batch_length(batch)

    def _optimizer_step(self, clock: Clock) -> None:
        if self.clipping:
            with clock("clipping"):
                self.precision.unscale(self.optimizer)
                clip_gradients(self.model, self.config.regularization)
        with clock("optimizer"):
            if not self.clipping:
                self.precision.unscale(self.optimizer)
            if self.decayed is not None:
                decay_weights(self.decayed, self.optimizer, self.config.regularization.decoupled_weight_decay)
            self.precision.step(self.optimizer)
            self.optimizer.zero_grad(set_to_none=True)
            self.schedule.after_step()


def _cycle(epochs: Callable[[int], Iterator[Any]], size: int) -> Iterator[Any]:
    while True:
        yield from epochs(size)


@dataclass
class Lane:
    """One run of steps among those `run_lanes` interleaves: its steps, batches and clock, and what it measured."""

    stepper: Steps
    stream: Stream
    clock: Clock = untimed
    seconds: list[float] = field(default_factory=list)  # per block of steps
    samples: int = 0  # examples in the timed steps


def block_of(device: torch.device, steps: int) -> int:
    """Steps timed as one: each step on a CPU, whose work is done when its call returns; on an asynchronous device,
    all of them, the device synchronized at their end only, so that its queue overlaps the host's work as in
    training."""
    return 1 if device.type == "cpu" else steps


def run_lanes(lanes: list[Lane], steps: int) -> None:
    """WARMUP_STEPS untimed steps, then `steps` timed ones, of each lane, taken in turns block by block (block_of):
    a load that another process puts on the machine for a while falls on every lane alike."""
    device = lanes[0].stepper.run.device
    for _ in range(WARMUP_STEPS):
        for lane in lanes:
            lane.stepper.step(untimed, lane.stream)
    block = block_of(device, steps)
    for first in range(0, steps, block):
        for lane in lanes:
            sync(device)
            start = time.perf_counter()
            for _ in range(min(block, steps - first)):
                lane.samples += lane.stepper.step(lane.clock, lane.stream)
            sync(device)
            lane.seconds.append(time.perf_counter() - start)


def _rounds(one: Callable[[], list[Lane]]) -> list[list[tuple[list[float], int]]]:
    """`one()` run ROUNDS times, none begun after ROUNDS_SECONDS: each round's lanes' block times and examples (the
    lanes themselves, which hold their batches, let go)."""
    start, rounds = time.perf_counter(), []
    for _ in range(ROUNDS):
        rounds.append([(lane.seconds, lane.samples) for lane in one()])
        if time.perf_counter() - start > ROUNDS_SECONDS:
            break
    return rounds


def _fastest(rounds: list[list[tuple[list[float], int]]], k: int) -> list[float]:
    """Lane `k`'s block times, each block's fastest round."""
    return [min(r[k][0][i] for r in rounds) for i in range(len(rounds[0][k][0]))]


def passes(stepper: Steps, steps: int) -> tuple[dict[str, float], tuple[float, float, float]]:
    """The phases (seconds per step) and the measured step (mean and median seconds, samples/s): `steps` steps with
    a timer around each phase, and the same steps with none inside them, interleaved (run_lanes), in up to ROUNDS
    rounds. Each step (each block, on an asynchronous device) keeps its fastest round: another process's burst falls
    on a few steps of a round, rarely on the same step of every round, and an epoch's costlier first batch stays
    costly in all."""
    device = stepper.run.device
    phased: list[list[dict[str, float]]] = []

    def one() -> list[Lane]:
        clock = PhaseClock(device)
        lanes = [Lane(stepper, stepper.stream(), clock), Lane(stepper, stepper.stream())]
        run_lanes(lanes, steps)
        phased.append(clock.steps)
        return lanes

    rounds = _rounds(one)
    per_step = [min((r[i] for r in phased), key=lambda p: sum(p.values())) for i in range(steps)]
    names = dict.fromkeys(name for p in per_step for name in p)  # in the order a step takes them
    phases = {name: sum(p.get(name, 0.0) for p in per_step) / steps for name in names}
    blocks = _fastest(rounds, 1)
    mean = sum(blocks) / steps
    block = block_of(device, steps)
    return phases, (mean, statistics.median(b / block for b in blocks), rounds[0][1][1] / (mean * steps))


def compared(base: Steps, changed: Steps, same_batch: bool = False) -> tuple[Timing, Timing]:
    """Two settings' steps (`changed` may be `base` itself, with one batch reused): ADVICE_STEPS of each, interleaved
    (run_lanes), in up to ROUNDS rounds, each step (block) keeping its fastest round as in `passes`; the median step
    counts (on an asynchronous device, the whole block's mean)."""

    def one() -> list[Lane]:
        lanes = [Lane(base, base.stream()), Lane(changed, changed.stream(same_batch))]
        run_lanes(lanes, ADVICE_STEPS)
        return lanes

    rounds = _rounds(one)
    block = block_of(base.run.device, ADVICE_STEPS)

    def timing(k: int) -> Timing:
        step = statistics.median(b / block for b in _fastest(rounds, k))
        return Timing(step, rounds[0][k][1] / ADVICE_STEPS / step)

    return timing(0), timing(1)


def flops_of(stepper: Steps) -> float:
    """One step's matmul and convolution FLOPs, forward and backward, counted on the eager model (a compiled one's
    kernels are not torch operators)."""
    stepped, stepper.stepped = stepper.stepped, stepper.model
    try:
        with FlopCounterMode(display=False) as counter:
            stepper.step(untimed, stepper.stream())
    finally:
        stepper.stepped = stepped
    return float(counter.get_total_flops())
