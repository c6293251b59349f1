"""`dltune profile`'s advice: rules that each change one setting, run it for a few steps beside the setting as
configured, and advise the change only where the measurement clears the rule's threshold.

A rule reads a `Situation` (what the profile measured, and a way to time a changed setting) and returns what it
checked as `Advice`, fired or not: a silent check keeps its numbers, so that the JSON says why nothing was
advised. Nothing here is guessed from the model's shape alone."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from dltune.experiment.config import ExperimentConfig
from dltune.registry import Registry
from dltune.run.precision import unsupported

__all__ = ["BATCH_FACTOR", "BATCH_SPEEDUP", "CHANNELS_LAST_SPEEDUP", "DATA_SAVING", "DATA_SHARE", "ORDER",
           "PRECISION_SPEEDUP", "RULES", "TECHNIQUES", "TECHNIQUE_SHARE", "Advice", "Situation", "Timing", "advise",
           "rule_names"]

# bf16 (fp16) changes what a step computes, and autocast's casts cost time of their own: a lower precision is worth
# the change where it saves more than a run's timing noise between two measurements (a few percent) by a margin
PRECISION_SPEEDUP = 1.15
# batching's share of the step (the phases' timing) from which its cost is worth a loader search
DATA_SHARE = 0.30
# ... and the share that the same steps with one batch reused must save, confirming that the wait is real
DATA_SAVING = 0.20
BATCH_FACTOR = 8  # the larger batch tried: 8x (capped by the training split), far enough to show the trend
# samples/s the larger batch must reach: a larger batch needs its lr retuned, worth it only for a clear gain
BATCH_SPEEDUP = 1.3
# a technique's share of the step (the step without it, against the step with it) worth saying out loud
TECHNIQUE_SHARE = 0.20
# channels-last changes no result, only the memory order: a smaller, but clear, gain is advice enough
CHANNELS_LAST_SPEEDUP = 1.1


@dataclass(frozen=True)
class Timing:
    """A setting's step, timed after a warm-up: seconds per step, samples per second, and (where counted) the
    step's matmul and convolution FLOPs (torch.utils.flop_counter, forward and backward)."""

    step_seconds: float
    samples_per_second: float
    flops: float | None = None


# (overrides, count FLOPs) -> (the setting as configured, the changed one), each timed in the same way
Compare = Callable[[Mapping[str, Any], bool], tuple[Timing, Timing]]


@dataclass(frozen=True)
class Situation:
    """What the rules read: the run's config and device, what the profile measured, and two ways to time a change
    beside the setting as configured."""

    config: ExperimentConfig
    device: torch.device
    convolutional: bool  # the model holds an nn.Conv2d
    n_train: int  # examples in the training split
    in_memory: bool  # the training split is tensors in memory (dltune batches them), not a Dataset or DataLoaders
    workers: int  # DataLoader worker processes (parallel.workers, or the user's training DataLoader's)
    batch: int  # examples per step
    shares: Mapping[str, float]  # phase -> its share of the step's phases
    peak_flops: float  # FLOP/s of a square matmul in the run's dtype, on this device and thread count
    compare: Compare
    compare_same_batch: Callable[[], tuple[Timing, Timing]]  # the step as configured, and with one batch reused


@dataclass(frozen=True)
class Advice:
    """One rule's check: `fired` where the measurement cleared its threshold (then `text` is the advice), else
    `text` says what was measured and nothing is advised."""

    rule: str  # precision | data | batch | technique | channels_last
    fired: bool
    text: str
    measured: dict[str, Any] = field(default_factory=dict)


Rule = Callable[[Situation], list[Advice]]
RULES: Registry[Rule] = Registry("advice rule")
ORDER = ("precision", "data", "batch", "technique", "channels_last")  # as the report lists them


def rule_names(rules: Sequence[str] | None) -> tuple[str, ...]:
    """The rules to check: `rules` (each a name of RULES; an unknown one is refused), or None: all, in ORDER."""
    if rules is None:
        return ORDER
    for name in rules:
        RULES.get(name, path="rules")
    return tuple(rules)


def advise(situation: Situation, rules: Sequence[str] | None = None) -> list[Advice]:
    """Every check of the named rules (None: all, in ORDER), fired or not."""
    return [advice for name in rule_names(rules) for advice in RULES.get(name)(situation)]


def _times(base: Timing, changed: Timing) -> float:
    """How many times faster the changed step is than the step as configured."""
    return base.step_seconds / changed.step_seconds


def _x(ratio: float) -> str:
    """A ratio as said: 1.47, 2.9 (two decimals below 2, where a threshold of 1.15 is told apart from 1.1)."""
    return f"{ratio:.2f}" if ratio < 2 else f"{ratio:.1f}"


@RULES.register("precision")
def precision(s: Situation) -> list[Advice]:
    """An fp32 run on a device that computes in bf16 (CUDA without bf16: fp16): the step in that precision."""
    if s.config.train.precision != "fp32":
        return []
    names = ("bf16", "fp16") if s.device.type == "cuda" else ("bf16",)  # a CPU's fp16 is emulated where it is at all
    name = next((n for n in names if unsupported(n, s.device) is None), None)
    if name is None:
        return []
    base, changed = s.compare({"train.precision": name}, False)
    speedup = _times(base, changed)
    measured = {"precision": name, "speedup": speedup, "fp32_step_ms": base.step_seconds * 1e3,
                f"{name}_step_ms": changed.step_seconds * 1e3}
    if speedup >= PRECISION_SPEEDUP:
        return [Advice("precision", True, f"{name} makes this model's step {_x(speedup)}× faster here: set "
                                          f'train.precision = "{name}"', measured)]
    return [Advice("precision", False, f"{name} was measured at {_x(speedup)}× fp32's speed here: fp32 kept "
                                       f"(advised from {PRECISION_SPEEDUP}×)", measured)]


@RULES.register("data")
def data(s: Situation) -> list[Advice]:
    """Batching that takes DATA_SHARE of the step: the steps again over one batch reused, to say what the wait costs."""
    share = s.shares.get("batching", 0.0)
    if share < DATA_SHARE:
        return []
    base, same = s.compare_same_batch()
    saving = 1 - same.step_seconds / base.step_seconds
    measured = {"batching_share": share, "saving": saving, "step_ms": base.step_seconds * 1e3,
                "same_batch_step_ms": same.step_seconds * 1e3}
    fired = saving >= DATA_SAVING
    # loader-find times tensors held in memory; a Dataset's or the user's DataLoaders are made faster by workers
    how = ("`dltune loader-find` times workers and threads" if s.in_memory else
           f"DataLoader workers make batches beside the step: set parallel.workers (now {s.workers}) and profile again")
    said = (f"data loading is {share:.0%} of the step (with one batch reused, the step takes "
            f"{same.step_seconds * 1e3:.3g} ms instead of {base.step_seconds * 1e3:.3g}): {how}")
    if not fired:
        said = (f"batching is {share:.0%} of the step by its timer, but one batch reused saves only {saving:.0%}: "
                "no loader advice")
    return [Advice("data", fired, said, measured)]


def _peak_share(t: Timing, peak: float) -> float:
    return (t.flops or 0.0) / t.step_seconds / peak


def _percent(x: float) -> str:
    """31%, 9.4%, 0.21%: two significant digits below 10%."""
    return f"{x:.0%}" if x >= 0.1 else f"{x * 100:.2g}%"


@RULES.register("batch")
def batch(s: Situation) -> list[Advice]:
    """A batch BATCH_FACTOR times larger (at most the training split): its samples/s and share of the matmul peak."""
    larger = min(s.batch * BATCH_FACTOR, s.n_train)
    if larger <= s.batch or s.config.batch.policy != "fixed":
        return []
    base, changed = s.compare({"batch.size": larger}, True)
    gain = changed.samples_per_second / base.samples_per_second
    used, reached = _peak_share(base, s.peak_flops), _peak_share(changed, s.peak_flops)
    measured = {"batch": s.batch, "larger": larger, "samples_per_second": base.samples_per_second,
                "larger_samples_per_second": changed.samples_per_second, "gain": gain, "peak_share": used,
                "larger_peak_share": reached}
    said = f"batch {s.batch} uses {_percent(used)} of the matmul peak; batch {larger} reaches {_percent(reached)}"
    if gain >= BATCH_SPEEDUP:
        return [Advice("batch", True, f"{said} ({_x(gain)}× the samples/s): `dltune batch-find` (and rescale "
                                      "optim.lr)", measured)]
    return [Advice("batch", False, f"{said}, with {_x(gain)}× the samples/s: the batch is kept (advised from "
                                   f"{BATCH_SPEEDUP}×)", measured)]


def _l2_hint(config: ExperimentConfig) -> str:
    """For the L2 penalty: the optimizer's own weight decay adds the same gradient (2·λ·w) in its step, where the
    optimizer's weight_decay is L2 (every one of dltune's but adamw, whose decay is decoupled)."""
    if config.optim.name == "adamw":
        return ""
    return (f": optim.weight_decay = {2 * config.regularization.l2:.3g} (2·l2) adds the same gradient inside the "
            "optimizer's step (to the biases too), for a fraction of the cost")


# each technique that costs time of its own: what it is called, whether the run has it on, and the settings that
# turn it off (the rest of the run as it is)
TECHNIQUES: list[tuple[str, Callable[[ExperimentConfig], bool], dict[str, Any]]] = [
    ("the L1 penalty", lambda c: c.regularization.l1 > 0, {"regularization.l1": 0.0}),
    ("the L2 penalty", lambda c: c.regularization.l2 > 0, {"regularization.l2": 0.0}),
    ("gradient clipping", lambda c: c.regularization.clip_norm is not None or c.regularization.clip_value is not None,
     {"regularization.clip_norm": None, "regularization.clip_value": None}),
    ("augmentation", lambda c: bool(c.regularization.augment), {"regularization.augment": []}),
    ("DropConnect", lambda c: c.regularization.dropconnect > 0, {"regularization.dropconnect": 0.0}),
    ("decoupled weight decay", lambda c: c.regularization.decoupled_weight_decay > 0,
     {"regularization.decoupled_weight_decay": 0.0}),
    ("distillation", lambda c: c.loss.distill_from is not None, {"loss.distill_from": None}),
]


@RULES.register("technique")
def technique(s: Situation) -> list[Advice]:
    """Each technique that is on: the step without it. Its cost is the share of the step it takes."""
    checks = []
    for name, on, off in TECHNIQUES:
        if not on(s.config):
            continue
        base, without = s.compare(off, False)
        cost = 1 - without.step_seconds / base.step_seconds
        measured = {"technique": name, "cost": cost, "step_ms": base.step_seconds * 1e3,
                    "without_step_ms": without.step_seconds * 1e3}
        if cost >= TECHNIQUE_SHARE:
            hint = _l2_hint(s.config) if name == "the L2 penalty" else ""
            checks.append(Advice("technique", True, f"{name} costs {cost:.0%} of the step{hint}", measured))
        else:
            checks.append(Advice("technique", False, f"{name} costs {max(cost, 0.0):.0%} of the step (advised from "
                                                     f"{TECHNIQUE_SHARE:.0%})", measured))
    return checks


@RULES.register("channels_last")
def channels_last(s: Situation) -> list[Advice]:
    """A convolutional model in the default memory order: the step with model.channels_last."""
    if not s.convolutional or s.config.model.channels_last:
        return []
    base, changed = s.compare({"model.channels_last": True}, False)
    speedup = _times(base, changed)
    measured = {"speedup": speedup, "step_ms": base.step_seconds * 1e3,
                "channels_last_step_ms": changed.step_seconds * 1e3}
    if speedup >= CHANNELS_LAST_SPEEDUP:
        return [Advice("channels_last", True, f"channels-last memory order makes this model's step {_x(speedup)}× "
                                              "faster here: set model.channels_last = true", measured)]
    return [Advice("channels_last", False, f"channels-last was measured at {_x(speedup)}× the speed here: kept "
                                           f"off (advised from {CHANNELS_LAST_SPEEDUP}×)", measured)]
