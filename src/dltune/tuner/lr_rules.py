"""Rules that turn a learning-rate range test's smoothed curve into a suggested lr, and the curve's checks.

Every rule is a pure function of the swept lrs and the smoothed loss (already cut where the loss shoots up),
so `benchmarks/bench_lr_find.py` can judge each rule by what training at its lr reaches.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = ["AGREEMENT", "CONSTANT_RULE", "NO_EDGE_RULE", "PEAK_RULE", "RULES", "SHOWN", "Rule", "curve_rules", "doubts",
           "rule_for", "trimmed", "valley"]

Rule = Callable[[np.ndarray, np.ndarray], float]  # (lrs, smoothed losses) -> lr


def trimmed(lr: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The curve up to halfway from its minimum to its end: the last points, where the loss shoots up, say
    nothing about a good lr."""
    n, low = len(s), int(np.argmin(s))
    end = max(5, low + 1 + (n - low - 1) // 2)
    return lr[:end], s[:end]


def steepest(lr: np.ndarray, s: np.ndarray) -> float:
    """The lr where the loss falls fastest against log10(lr) (torch-lr-finder's rule)."""
    grad = np.gradient(s, np.log10(lr))
    return float(lr[int(np.argmin(grad[1:-1])) + 1]) if len(grad) > 2 else float(lr[0])


def minimum(lr: np.ndarray, s: np.ndarray) -> float:
    """The lr of the lowest smoothed loss."""
    return float(lr[int(np.argmin(s))])


def valley(lr: np.ndarray, s: np.ndarray) -> float:
    """The valley rule (fastai): the longest stretch of falling loss; the lr two thirds down it."""
    n = len(s)
    lengths, previous = [1] * n, [-1] * n
    for i in range(1, n):  # longest decreasing subsequence ending at i
        for j in range(i):
            if s[i] < s[j] and lengths[j] + 1 > lengths[i]:
                lengths[i], previous[i] = lengths[j] + 1, j
    end = int(np.argmax(lengths))
    start = end
    while previous[start] != -1:
        start = previous[start]
    return float(lr[start + round((end - start) * 2 / 3)])


def _geometric(*values: float) -> float:
    return float(math.exp(sum(math.log(v) for v in values) / len(values)))


RULES: dict[str, Rule] = {
    "steepest": steepest,
    "valley": valley,
    "min/10": lambda lr, s: minimum(lr, s) / 10,
    "min/3": lambda lr, s: minimum(lr, s) / 3,
    "min/2": lambda lr, s: minimum(lr, s) / 2,
    "min": minimum,
    "geo(steep,min/10)": lambda lr, s: _geometric(steepest(lr, s), minimum(lr, s) / 10),
    "geo(steep,min/3)": lambda lr, s: _geometric(steepest(lr, s), minimum(lr, s) / 3),
    "geo(valley,min/10)": lambda lr, s: _geometric(valley(lr, s), minimum(lr, s) / 10),
}


def doubts(lr: np.ndarray, s: np.ndarray, raw: np.ndarray, suggestions: dict[str, float],
           stopped: bool) -> list[str]:
    """Why the curve may not support a suggestion (none: confident). `lr`, `s`: the trimmed curve; `raw`: its
    unsmoothed losses; `stopped`: the sweep ended because the loss passed `diverge` × its best."""
    reasons = []
    drop = (s[0] - s.min()) / max(abs(s[0]), 1e-12)
    if drop < 0.1:
        reasons.append(f"no descent (the smoothed loss fell {drop:.0%} from its start)")
    noise = float(np.median(np.abs(raw - s)) / max(float(np.median(np.abs(s))), 1e-12))
    if noise > 0.5:
        reasons.append(f"too noisy (median deviation from the smoothed curve {noise:.0%})")
    spread = math.log10(max(suggestions.values()) / min(suggestions.values()))
    if spread > 1.5:
        reasons.append(f"the rules disagree by {spread:.1f} decades")
    if not stopped:
        reasons.append("the loss never blew up in the sweep, so its lowest point marks no edge of stability")
    return reasons


def curve_rules(lr: np.ndarray, s: np.ndarray, names: list[str] | None = None) -> dict[str, float]:
    """Each named rule's lr on a trimmed curve (all of RULES by default)."""
    return {name: RULES[name](lr, s) for name in names or list(RULES)}

SHOWN = ["steepest", "valley", "min/10", "min/3", "min/2", "geo(steep,min/10)"]  # the rules lr_find reports
# how far apart these lie is the "rules disagree" check (the others lie between them on every curve measured)
AGREEMENT = ["steepest", "valley", "min/10", "min/3"]
CONSTANT_RULE = "geo(steep,min/10)"  # the lr a constant schedule keeps to the end
PEAK_RULE = "min/2"  # the peak of a schedule that decays (onecycle, cosine, ...), which ends far below it
NO_EDGE_RULE = "min/10"  # any schedule, when the loss never blew up in the sweep


def rule_for(schedule: str, blew_up: bool = True) -> str:
    """The rule whose lr lr_find suggests, chosen by the accuracy that training at it reaches against the best of an
    lr grid (benchmarks/bench_lr_find.py: 5 problems x 2 schedules, chosen on seeds 1-8 (onecycle: 1-16), checked on
    seeds 9-16 (onecycle: 17-24); README, "Finders"):

    * a constant lr: the geometric mean of the steepest descent and a tenth of the lowest loss's lr. On seeds 1-8 it
      was within 0.39 points of the grid's best on every problem whose sweep blew up; geo(steep,min/3), the rule
      before, missed by 0.84 on the digits MLP; steepest alone (torch-lr-finder) and min/10 (fastai's lr_min / 10)
      each missed by 0.85-1.0 on one MLP or another. Valley (fastai's default) missed by 1.1-3.2 points everywhere:
      it sits on the descent's shallow start.
    * the peak of a decaying schedule (measured with onecycle): min/2, half the lowest loss's lr; training ends far
      below the peak, so it can be higher than a constant lr. min/3, chosen first on seeds 1-8 (worst gap 0.43),
      missed by 0.64 on the reference MLP on seeds 9-16 while confident; min/2 trailed by at most 0.45 on seeds
      1-16 on the four problems whose sweeps mostly blew up, and by at most 0.40 on the fresh seeds 17-24.
    * a sweep whose loss never blew up (a batch-norm net: the loss flattens instead) has no edge of stability, and
      its steepest point wanders (0.08 to 1.9 on examples/own_model): min/10, a decade below the lowest loss, for any
      schedule. Such a curve is never confident (`doubts`); with a constant lr it can miss by points (own model).
    """
    if not blew_up:
        return NO_EDGE_RULE
    return CONSTANT_RULE if schedule == "constant" else PEAK_RULE
