"""ASHA's assumption, checked as a search goes: does a trial's rank at a rung predict its rank later?

Where the first epochs mislead (a model that overfits, dropout and weight decay that pay only late), successive
halving's first rung throws away the configurations that would win. The trials promoted from a rung that have
reached the next rung (or the end) give pairs, their value at the rung and their latest value, and Spearman's ρ of
those pairs says how well the rung ranks. A rung whose ρ falls below RANK_AGREEMENT, on at least RANK_PAIRS pairs,
no longer holds anyone back: every trial waiting there goes on to the next rung, as if the first rung had been set
there (trials wait at a rung until the search drains, so none of them was lost). Where the ranks agree nothing
changes, and the search spends successive halving's exact budget.

The pairs come from the trials the rung promoted, its best ones; their ρ is lower than the ρ over all trials even
where the rung ranks well (the range is cut), which the threshold allows for. `replay` runs the search loop's
decisions on known learning curves, for tests with a known answer and for choosing the threshold.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial
from scipy import stats

from dltune.study.asha import Turn, next_move, rungs

__all__ = ["RANK_AGREEMENT", "RANK_PAIRS", "RankCheck", "Replay", "distrusted", "rank_checks", "replay"]

# a rung ranks too badly to stop trials when Spearman's ρ between its values and later ones falls below this, on at
# least RANK_PAIRS trials that went on (chosen on benchmarks/bench_suite.py's replays; README, "Pruning")
RANK_AGREEMENT = 0.3
RANK_PAIRS = 4


@dataclass(frozen=True)
class RankCheck:
    """How well a rung's values rank trials: Spearman's ρ between the values at `epoch` and the latest values (at the
    next rung or later) of the `pairs` trials that went on from it; `trusted` False when ρ < `agreement` on at
    least `min_pairs` pairs."""

    epoch: int
    rho: float
    pairs: int
    later: int  # the next rung (or the end): the epoch at which the pairs' later values start
    agreement: float = RANK_AGREEMENT
    min_pairs: int = RANK_PAIRS

    @property
    def trusted(self) -> bool:
        return self.pairs < self.min_pairs or not self.rho < self.agreement  # nan (ties): no evidence against it

    def said(self, first: int | None) -> str:
        """The line a search prints when this rung stops holding trials back; `first`: the first rung left (None:
        none, trials train to the end)."""
        moved = f"first rung moved to epoch {first}" if first is not None else "no rung left, trials train to the end"
        return (f"epoch-{self.epoch} ranks agree with later ranks at ρ = {self.rho:.2f} ({self.pairs} trials that went "
                f"on); trials waiting there go on: {moved}")


def rank_checks(trials: list[FrozenTrial], epochs: list[int], final: int, maximize: bool, *,
                agreement: float = RANK_AGREEMENT, min_pairs: int = RANK_PAIRS) -> dict[int, RankCheck]:
    """Each rung's RankCheck (rung epoch -> check) from `trials`' per-epoch values; `epochs`: the rungs, `final`:
    the training's length. A trial gives a pair at a rung when it holds a value there and one at the next rung or
    later; ρ is nan below 2 pairs, or when the values are all tied."""
    sign = 1.0 if maximize else -1.0
    checks = {}
    for k, epoch in enumerate(epochs):
        later = epochs[k + 1] if k + 1 < len(epochs) else final
        pairs = [(t.intermediate_values[epoch], t.intermediate_values[max(t.intermediate_values)])
                 for t in trials if epoch in t.intermediate_values and max(t.intermediate_values) >= later]
        rho = math.nan
        if len(pairs) >= 2 and len({a for a, _ in pairs}) > 1 and len({b for _, b in pairs}) > 1:
            rho = float(stats.spearmanr([sign * a for a, _ in pairs], [sign * b for _, b in pairs]).statistic)
        checks[epoch] = RankCheck(epoch, rho, len(pairs), later, agreement, min_pairs)
    return checks


def distrusted(study: optuna.Study, trials: list[FrozenTrial], epochs: list[int], final: int,
               maximize: bool) -> set[int]:
    """The rungs of `epochs` whose ranks disagree with later ranks, which promote every trial. A rung found so for
    the first time is said (logger "dltune") and recorded in the study's "rungs_moved", for the report and for every
    worker: once moved, a rung stays moved (ρ over a few pairs moves with each trial that goes on, and a search that
    said it moved its first rung does so)."""
    if not epochs:
        return set()
    checks = rank_checks(trials, epochs, final, maximize)
    moved = study.user_attrs.get("rungs_moved", [])
    before = {m["epoch"] for m in moved}
    found = {e for e, c in checks.items() if not c.trusted} | before
    new = sorted(found - before)
    if new:
        first = min((e for e in epochs if e not in found), default=None)
        for epoch in new:
            check = checks[epoch]
            moved = [*moved, {"epoch": epoch, "rho": check.rho, "pairs": check.pairs, "first_rung": first,
                              "said": check.said(first)}]
            logging.getLogger("dltune").warning(check.said(first))
        study.set_user_attr("rungs_moved", moved)
    return found


@dataclass(frozen=True)
class _Curve:
    number: int
    intermediate_values: dict[int, float]


@dataclass(frozen=True)
class Replay:
    """What the search loop's decisions make of known learning curves (replay)."""

    best: int | None  # the complete trial with the best final value
    epochs: int  # epochs trained in all
    stopped: dict[int, int]  # pruned trial -> the epoch it stopped at
    moved: list[RankCheck]  # the rungs that stopped holding trials back, in order


def replay(curves: list[list[float]], *, factor: int, min_epochs: int, maximize: bool = True, checks: bool = True,
           agreement: float = RANK_AGREEMENT, min_pairs: int = RANK_PAIRS) -> Replay:
    """The search loop's decisions (next_move, one worker) on trials whose per-epoch values are known: trial i,
    started i-th, reports curves[i][e - 1] at epoch e. `checks` False: ASHA without rank_checks. For tests with a
    known answer and for choosing RANK_AGREEMENT on the learning curves of full searches (bench_suite)."""
    final = len(curves[0])
    ladder = rungs(min_epochs, factor, final)
    seen: dict[int, dict[int, float]] = {}
    paused: dict[int, int] = {}
    stopped: dict[int, int] = {}
    moved: list[RankCheck] = []

    def train(number: int, start: int) -> None:  # from epoch `start` to the next rung or the end
        for epoch in range(start + 1, final + 1):
            seen[number][epoch] = curves[number][epoch - 1]
            if epoch in ladder:
                paused[number] = epoch
                return

    while True:
        trials = [_Curve(n, values) for n, values in seen.items()]
        rank = rank_checks(trials, ladder, final, maximize, agreement=agreement, min_pairs=min_pairs) if checks \
            else {}
        distrusted = {e for e, c in rank.items() if not c.trusted} | {c.epoch for c in moved}  # moved stays moved
        for epoch in sorted(distrusted - {c.epoch for c in moved}):
            moved.append(rank[epoch])
        finished = len(seen) - len(paused)
        turn = Turn(finished=finished, running=len(paused), target=len(curves), late=False, heartbeats=False,
                    training_elsewhere=False)
        move = next_move(turn, trials, dict(paused), factor=factor, maximize=maximize, max_paused=len(curves),
                         distrusted=distrusted)
        if move.kind == "end":
            break
        if move.kind == "start":
            seen[len(seen)] = {}
            train(len(seen) - 1, 0)
        elif move.kind == "resume":
            assert move.trial is not None
            train(move.trial, paused.pop(move.trial))
        elif move.kind == "prune":
            assert move.trial is not None
            stopped[move.trial] = paused.pop(move.trial)
        else:
            raise AssertionError(f"one worker never gets {move.kind}")
    sign = 1.0 if maximize else -1.0
    complete = [n for n, values in seen.items() if n not in stopped and final in values]
    best = max(complete, key=lambda n: sign * seen[n][final]) if complete else None
    return Replay(best, sum(len(v) for v in seen.values()), stopped, moved)
