"""Population-based training (Jaderberg et al. 2017): a population of runs trained side by side, whose weakest, at
every `interval` epochs, copy the whole state of one of the strongest (exploit) and go on with changed settings
(explore). It finds schedules (an lr that falls as training goes on), not constants, on one run's budget per member.

The decision is a pure function of the population's values at a generation's end (`decide`); the search loop
(study.pbt_search) only carries it out. dltune's PBT is synchronous: every member ends generation g before any
member's generation g + 1 is decided, so that the decisions depend on the values alone, never on which worker was
quicker. The same seeds give the same lineage with one worker or several, and after a kill and a resume (Ray Tune's
PopulationBasedTraining decides asynchronously, on whatever values have arrived: that is its `--backend ray` form).

Explore as Ray Tune's PBT does it: each changeable key is drawn afresh from the space with `resample_probability`,
else multiplied by one of the `perturb` factors (a categorical entry moves to a neighbouring choice), kept within
the space's bounds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dltune.errors import ConfigError
from dltune.experiment.sections import CHANGEABLE, ExperimentConfig, SearchConfig
from dltune.study.space import Entry, SearchSpace

__all__ = ["Member", "Next", "boundaries", "changeable_space", "check_population", "decide", "draw", "explore",
           "in_quantile", "within"]


@dataclass(frozen=True)
class Member:
    """A member at a generation's end: its number, its value there (None: it diverged or failed, and has no state to
    go on from), and the settings of the space it trained with."""

    number: int
    value: float | None
    settings: Mapping[str, Any]


@dataclass(frozen=True)
class Next:
    """A member's next generation: whose state it goes on from (itself, or the member it copies), its settings, and
    how each key changed ("×0.8", "×1.2", "resampled", "left", "up", "down"; empty when it did not exploit)."""

    member: int
    source: int
    settings: dict[str, Any]
    changed: dict[str, str] = field(default_factory=dict)

    @property
    def exploited(self) -> bool:
        return self.source != self.member


def boundaries(epochs: int, interval: int) -> list[int]:
    """The epochs at which generations end: every `interval` epochs, and the run's last."""
    ends = list(range(interval, epochs, interval))
    return [*ends, epochs]


def in_quantile(population: int, quantile: float) -> int:
    """Members in the top and in the bottom quantile: ⌈population · quantile⌉, at most half the population (as Ray
    Tune's PBT counts them)."""
    return min(math.ceil(population * quantile), population // 2)


def decide(members: Sequence[Member], entries: Sequence[Entry], *, quantile: float, resample_probability: float,
           perturb: Sequence[float], maximize: bool, seed: Sequence[int]) -> list[Next]:
    """Each member's next generation, from the members' values at the end of this one.

    The members are ranked by value (ties by number); those in the bottom quantile (in_quantile), and any member
    without a value, copy a member of the top quantile, drawn at random, then explore its settings; the others go on
    as they are. `seed` seeds the draws (the search's seed and the generation): the same values give the same
    decision, in any process.
    """
    rng = np.random.default_rng(list(seed))
    sign = 1.0 if maximize else -1.0
    ranked = sorted(members, key=lambda m: (-(sign * m.value) if m.value is not None else math.inf, m.number))
    k = in_quantile(len(members), quantile)
    alive = [m for m in ranked if m.value is not None]
    top = alive[:k] or alive[:1]
    bottom = {m.number for m in ranked[len(ranked) - k:]} | {m.number for m in members if m.value is None}
    if not top:
        raise ConfigError("search.pruner pbt: every member of the population diverged or failed; nothing to go on "
                          "from (a lower optim.lr in search.space, say)")
    out = []
    for m in sorted(members, key=lambda m: m.number):
        if m.number not in bottom or m.number in {t.number for t in top}:
            out.append(Next(m.number, m.number, dict(m.settings)))
            continue
        donor = top[int(rng.integers(len(top)))]
        settings, changed = explore(donor.settings, entries, resample_probability, perturb, rng)
        out.append(Next(m.number, donor.number, settings, changed))
    return out


def explore(settings: Mapping[str, Any], entries: Sequence[Entry], resample_probability: float,
            perturb: Sequence[float], rng: np.random.Generator) -> tuple[dict[str, Any], dict[str, str]]:
    """`settings` explored: each entry's value resampled (with resample_probability), or perturbed by a factor of
    `perturb` (a categorical choice: one step up or down), within the entry's bounds; and how each changed."""
    new, how = dict(settings), {}
    for e in entries:
        if rng.random() < resample_probability:
            new[e.path], how[e.path] = draw(e, rng), "resampled"
        elif e.kind == "categorical":
            i = [_same(c, settings[e.path]) for c in e.choices].index(True)
            j = min(max(i + (1 if rng.random() < 0.5 else -1), 0), len(e.choices) - 1)
            new[e.path], how[e.path] = e.choices[j], ("up" if j > i else "down" if j < i else "left")
        else:
            factor = perturb[int(rng.integers(len(perturb)))]
            new[e.path], how[e.path] = within(e, settings[e.path] * factor), f"×{factor:g}"
    return new, how


def draw(e: Entry, rng: np.random.Generator) -> Any:
    """A value of the entry at random: uniform, log-uniform where the entry says log, on its step's grid."""
    if e.kind == "categorical":
        return e.choices[int(rng.integers(len(e.choices)))]
    if e.log:
        value = math.exp(rng.uniform(math.log(e.low), math.log(e.high)))
    else:
        value = rng.uniform(e.low, e.high)
    return within(e, value)


def within(e: Entry, value: float) -> Any:
    """`value` within the entry's bounds, on its step's grid, an int for an int entry."""
    value = min(max(value, e.low), e.high)
    if e.step is not None:
        value = min(e.low + round((value - e.low) / e.step) * e.step, e.high)
    return int(round(value)) if e.kind == "int" else float(value)


def _same(a: Any, b: Any) -> bool:
    return a == b and type(a) is type(b) or (isinstance(a, (int, float)) and isinstance(b, (int, float)) and a == b)


def changeable_space(space: SearchSpace) -> list[Entry]:
    """The space's entries, each a setting that PBT can change between two epochs (experiment.sections.CHANGEABLE);
    any other is refused, naming it: a member that copies another's state must be able to load it, and a changed
    model.hidden or batch.size could not go on from the same weights and optimizer."""
    for e in space.entries:
        if e.path not in CHANGEABLE:
            raise ConfigError(f"search.space.{e.path}: PBT (search.pruner = \"pbt\") changes its settings during "
                              f"training, and {e.path} cannot change mid-run (a member copies another's weights and "
                              f"optimizer state); those that can: {', '.join(sorted(CHANGEABLE))}")
        if e.when:
            raise ConfigError(f"search.space.{e.path}: when: PBT's members keep one set of keys; leave out when")
    return list(space.entries)


def check_population(search: SearchConfig, space: SearchSpace, base: ExperimentConfig, objectives: int) -> None:
    """What PBT needs of a search, checked before any trial (errors name the key)."""
    changeable_space(space)
    epochs = base.train.epochs
    if search.interval >= epochs:
        raise ConfigError(f"search.interval: {search.interval} epochs between decisions leaves none in a run of "
                          f"train.epochs = {epochs}; choose fewer")
    if objectives > 1:
        raise ConfigError("search.objectives: PBT ranks its members by one objective; name one")
    if base.train.auto:
        raise ConfigError("train.auto: not with PBT, whose members take their settings from the space and from each "
                          "other; leave train.auto out")
    if base.train.changes:
        raise ConfigError("train.changes: PBT writes each member's changes itself; leave train.changes out")
    if base.parallel.strategy != "none":
        raise ConfigError("parallel.strategy: PBT's members train in one process each; leave parallel.strategy out")
