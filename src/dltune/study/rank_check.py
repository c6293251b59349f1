"""ASHA's assumption, checked as a search goes: does a trial's rank at a rung predict its rank later?

Where the first epochs mislead (a model that overfits, dropout and weight decay that pay only late), successive
halving's first rung throws away the configurations that would win. The trials promoted from a rung that have
reached the next rung (or the end) give pairs, their values at the two epochs, and Spearman's ρ of those pairs says
how well the rung ranks. A rung whose ranks are reversed at the next rung (ρ < 0, one-sided p < RANK_P, on at
least RANK_PAIRS pairs) no longer holds anyone back: every trial waiting there goes on to the next rung, as if the
first rung had been set there (trials wait at a rung until the search drains, so none of them was lost). Where the
ranks agree nothing changes, and the search spends successive halving's exact budget.

The pairs come from the trials the rung promoted, its best ones, among which ρ is weak even where the rung ranks
well (the range is cut); so ASHA gives every fourth promotion of a rung, from the second on, to a witness, the
waiting trial nearest the rung's median (asha.promotable): its later value says whether a typical trial keeps its
place. `replay` runs the search loop's decisions on known learning curves, for tests with a known answer and for
choosing the threshold.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from scipy import stats

from dltune.study.asha import Turn, next_move, rungs
from dltune.study.records import Curve

__all__ = ["RANK_PAIRS", "RANK_P", "RankCheck", "Replay", "distrusted", "moved", "rank_checks", "replay"]

# a rung stops holding trials back when the trials that went on from it rank the other way at the next rung: Spearman's
# ρ < 0 with a one-sided p below RANK_P (scipy's t approximation), on at least RANK_PAIRS trials. Chosen on replays of
# bench_suite's full searches (seeds 1-3), checked by its real searches on seeds 4-13 (README, "Automatic decisions")
RANK_P = 0.1
RANK_PAIRS = 3


@dataclass(frozen=True)
class RankCheck:
    """How well a rung's values rank trials: Spearman's ρ between the values at `epoch` and at the next rung
    (`later`, or the end) of the `pairs` trials that reached both, and the one-sided p of a ρ that low under no
    association; `trusted` False when p < `alpha` on at least `min_pairs` pairs."""

    epoch: int
    rho: float
    p: float
    pairs: int
    later: int
    alpha: float = RANK_P
    min_pairs: int = RANK_PAIRS

    @property
    def trusted(self) -> bool:
        return self.pairs < self.min_pairs or not self.p < self.alpha  # nan (ties): no evidence against it

    def said(self, first: int | None) -> str:
        """The line a search prints when this rung stops holding trials back; `first`: the first rung left (None:
        none, trials train to the end)."""
        where = f"first rung moved to epoch {first}" if first is not None else "no rung left, trials train to the end"
        return (f"epoch-{self.epoch} ranks were reversed at epoch {self.later} (ρ = {self.rho:.2f} over {self.pairs} "
                f"trials that went on, p = {self.p:.2f}); trials waiting there go on: {where}")


def rank_checks(trials: Sequence[Curve], epochs: list[int], final: int, maximize: bool, *,
                alpha: float = RANK_P, min_pairs: int = RANK_PAIRS) -> dict[int, RankCheck]:
    """Each rung's RankCheck (rung epoch -> check) from `trials`' per-epoch values; `epochs`: the rungs, `final`:
    the training's length. A trial gives a pair at a rung when it holds values there and at the next rung (the end
    after the last): values of one epoch, comparable. ρ and p are nan below 3 pairs or where values are tied."""
    sign = 1.0 if maximize else -1.0
    checks = {}
    for k, epoch in enumerate(epochs):
        later = epochs[k + 1] if k + 1 < len(epochs) else final
        pairs = [(sign * t.intermediate_values[epoch], sign * t.intermediate_values[later]) for t in trials
                 if epoch in t.intermediate_values and later in t.intermediate_values]
        rho = p = math.nan
        if len(pairs) >= 3 and len({a for a, _ in pairs}) > 1 and len({b for _, b in pairs}) > 1:
            test = stats.spearmanr([a for a, _ in pairs], [b for _, b in pairs], alternative="less")
            rho, p = float(test.statistic), float(test.pvalue)
        checks[epoch] = RankCheck(epoch, rho, p, len(pairs), later, alpha, min_pairs)
    return checks


def moved(checks: dict[int, RankCheck], before: set[int]) -> set[int]:
    """The rungs that promote every trial: those `checks` distrust now, and those moved `before`. Once moved, a
    rung stays moved: ρ over a few pairs moves with each trial that goes on, and a search that said it moved its
    first rung does so."""
    return {e for e, c in checks.items() if not c.trusted} | before


def distrusted(study: optuna.Study, trials: Sequence[Curve], epochs: list[int], final: int,
               maximize: bool) -> set[int]:
    """The rungs of `epochs` whose ranks disagree with later ranks, which promote every trial. A rung found so for
    the first time is said (logger "dltune") and recorded in the study's "rungs_moved", for the report and for every
    worker (`moved`)."""
    if not epochs:
        return set()
    checks = rank_checks(trials, epochs, final, maximize)
    said = study.user_attrs.get("rungs_moved", [])
    before = {m["epoch"] for m in said}
    found = moved(checks, before)
    new = sorted(found - before)
    if new:
        first = min((e for e in epochs if e not in found), default=None)
        for epoch in new:
            check = checks[epoch]
            said = [*said, {"epoch": epoch, "rho": check.rho, "p": check.p, "pairs": check.pairs,
                              "later": check.later, "first_rung": first, "said": check.said(first)}]
            logging.getLogger("dltune").warning(check.said(first))
        study.set_user_attr("rungs_moved", said)
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
           alpha: float = RANK_P, min_pairs: int = RANK_PAIRS) -> Replay:
    """The search loop's decisions (next_move, one worker) on trials whose per-epoch values are known: trial i,
    started i-th, reports curves[i][e - 1] at epoch e. `checks` False: ASHA without rank_checks. For tests with a
    known answer and for choosing RANK_P on the learning curves of full searches (bench_suite)."""
    final = len(curves[0])
    ladder = rungs(min_epochs, factor, final)
    seen: dict[int, dict[int, float]] = {}
    paused: dict[int, int] = {}
    stopped: dict[int, int] = {}
    shifted: list[RankCheck] = []

    def train(number: int, start: int) -> None:  # from epoch `start` to the next rung or the end
        for epoch in range(start + 1, final + 1):
            seen[number][epoch] = curves[number][epoch - 1]
            if epoch in ladder:
                paused[number] = epoch
                return

    while True:
        trials = [_Curve(n, values) for n, values in seen.items()]
        rank = rank_checks(trials, ladder, final, maximize, alpha=alpha, min_pairs=min_pairs) if checks else {}
        before = {c.epoch for c in shifted}
        distrusted = moved(rank, before)
        shifted += [rank[epoch] for epoch in sorted(distrusted - before)]
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
    return Replay(best, sum(len(v) for v in seen.values()), stopped, shifted)
