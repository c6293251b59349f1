"""Search spaces: `[search.space]` entries parsed into distributions, checked, and sampled per trial.

An entry maps a dotted path of the experiment to
  - a list of choices: categorical (values may be lists, e.g. hidden sizes);
  - { low, high, log?, step? }: float, or int when low and high are integers;
  - { depth = [a, b], width = [lo, hi], log? }: a list of ints (layer widths) of sampled length;
  - any of these with `choices = [...]` written out and `when = { "other.path" = value or [values] }`:
    the entry applies only when that categorical entry took one of those values.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from dltune.errors import ConfigError
from dltune.experiment.config import ExperimentConfig, override

__all__ = ["Entry", "SearchSpace", "encode", "flatten_paths", "parse_space"]


@dataclass(frozen=True)
class Entry:
    path: str
    kind: str  # categorical | float | int | layers
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    depth: tuple[int, int] = (1, 1)
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # (path, allowed values) pairs, all must hold

    def distribution(self) -> BaseDistribution:
        if self.kind == "categorical":
            return CategoricalDistribution([encode(c) for c in self.choices])
        if self.kind == "float":
            return FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))

    def examples(self) -> list[Any]:
        """Values that span the entry, to check against the experiment before any trial."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "layers":
            return [[int(self.low)] * self.depth[0], [int(self.high)] * self.depth[1]]
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(self.high)]


class SearchSpace:
    """The parsed entries, sorted by path, in an order where every condition is sampled before what it gates."""

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """Dotted-path overrides for this trial."""
        chosen: dict[str, Any] = {}
        for e in self.entries:
            if any(chosen.get(path, _MISSING) not in values for path, values in e.when):
                continue
            if e.kind == "categorical":
                chosen[e.path] = _decode(trial.suggest_categorical(e.path, [encode(c) for c in e.choices]))
            elif e.kind == "float":
                chosen[e.path] = trial.suggest_float(e.path, e.low, e.high, log=e.log, step=e.step)
            elif e.kind == "int":
                chosen[e.path] = trial.suggest_int(e.path, int(e.low), int(e.high), log=e.log, step=int(e.step or 1))
            else:
                depth = trial.suggest_int(f"{e.path}.depth", *e.depth)
                chosen[e.path] = [trial.suggest_int(f"{e.path}[{i}]", int(e.low), int(e.high), log=e.log)
                                  for i in range(depth)]
        return chosen

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's search space: every entry categorical or stepped, no conditions."""
        grid: dict[str, list[Any]] = {}
        for e in self.entries:
            if e.when or e.kind == "layers" or (e.kind == "float" and e.step is None):
                raise ConfigError(f"search.space.{e.path}: the grid sampler needs choices or a step, and no conditions")
            if e.kind == "categorical":
                grid[e.path] = [encode(c) for c in e.choices]
            else:
                step = e.step or 1
                n = int(round((e.high - e.low) / step)) + 1
                grid[e.path] = [int(e.low + i * step) if e.kind == "int" else e.low + i * step for i in range(n)]
        return grid


_MISSING = object()


def parse_space(raw: Mapping[str, Any], base: ExperimentConfig) -> SearchSpace:
    """Entries from `[search.space]`, each checked against `base` before any trial (errors name the entry)."""
    if not raw:
        raise ConfigError("search.space: empty; name at least one setting to search, e.g. "
                          '"optim.lr" = { low = 1e-4, high = 1e-1, log = true }')
    entries = {path: _entry(path, spec) for path, spec in flatten_paths(raw).items()}
    for e in entries.values():
        for path, values in e.when:
            gate = entries.get(path)
            if gate is None or gate.kind != "categorical":
                raise ConfigError(f"search.space.{e.path}: when: {path!r} is not a categorical entry of the space")
            unknown = [v for v in values if v not in gate.choices]
            if unknown:
                raise ConfigError(f"search.space.{e.path}: when: {path} has no choice {unknown[0]!r}; "
                                  f"its choices: {', '.join(map(repr, gate.choices))}")
        for value in e.examples():
            try:
                override(base, {e.path: value})
            except ConfigError as err:
                raise ConfigError(f"search.space.{e.path}: {err}") from None
    # by path, conditions first: the same sampling order whatever the file's key order, in every process
    return SearchSpace(_ordered(sorted(entries.values(), key=lambda e: e.path)))


def _entry(path: str, spec: Any) -> Entry:
    where = f"search.space.{path}"
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a list of choices or a table with low/high, choices, or depth/width")
    spec = dict(spec)
    when = tuple((p, tuple(v if isinstance(v, list) else [v])) for p, v in dict(spec.pop("when", {})).items())
    known = {"choices", "low", "high", "log", "step", "depth", "width"}
    extra = sorted(set(spec) - known)
    if extra:
        raise ConfigError(f"{where}: unknown key {extra[0]!r}; allowed: choices, low, high, log, step, depth, width, "
                          "when")
    if "choices" in spec:
        choices = tuple(spec["choices"])
        if not choices:
            raise ConfigError(f"{where}: empty list of choices")
        return Entry(path, "categorical", choices=choices, when=when)
    if "depth" in spec:
        depth, width = spec.get("depth"), spec.get("width")
        if not (_pair(depth) and _pair(width)) or any(isinstance(v, float) for v in (*depth, *width)):
            raise ConfigError(f"{where}: depth and width need [low, high] integer pairs")
        _check_range(where, width[0], width[1], spec.get("log", False))
        _check_range(where, depth[0], depth[1], False)
        if depth[0] < 1:
            raise ConfigError(f"{where}: depth must be at least 1")
        return Entry(path, "layers", low=width[0], high=width[1], log=bool(spec.get("log", False)),
                     depth=(depth[0], depth[1]), when=when)
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: needs low and high (or choices, or depth and width)")
    low, high, log, step = spec["low"], spec["high"], bool(spec.get("log", False)), spec.get("step")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise ConfigError(f"{where}: low and high must be numbers")
    if not all(math.isfinite(v) for v in (low, high)):
        raise ConfigError(f"{where}: low and high must be finite numbers (got {low}, {high})")
    _check_range(where, low, high, log)
    if step is not None and (not isinstance(step, (int, float)) or not math.isfinite(step) or step <= 0):
        raise ConfigError(f"{where}: step must be a positive number")
    if log and step is not None:
        raise ConfigError(f"{where}: log and step cannot go together")
    kind = "int" if isinstance(low, int) and isinstance(high, int) and not isinstance(step, float) else "float"
    return Entry(path, kind, low=low, high=high, log=log, step=step, when=when)


def _check_range(where: str, low: float, high: float, log: bool) -> None:
    if low > high:
        raise ConfigError(f"{where}: low > high ({low} > {high})")
    if low == high:
        raise ConfigError(f"{where}: empty range (low = high = {low})")
    if log and low <= 0:
        raise ConfigError(f"{where}: log needs low > 0 (got {low})")


def _pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)


def _ordered(entries: list[Entry]) -> list[Entry]:
    """Conditions first: repeatedly take the entries whose gates are already placed."""
    placed: list[Entry] = []
    names: set[str] = set()
    while len(placed) < len(entries):
        ready = [e for e in entries if e.path not in names and all(p in names for p, _ in e.when)]
        if not ready:
            cycle = [e.path for e in entries if e.path not in names]
            raise ConfigError(f"search.space: conditions form a cycle among {', '.join(cycle)}")
        placed += ready
        names |= {e.path for e in ready}
    return placed


def flatten_paths(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Accept both "optim.lr" = {...} and [search.space.optim] lr = {...}."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, Mapping) and not (set(value) & {"choices", "low", "high", "depth", "when"}):
            flat.update({f"{key}.{k}": v for k, v in flatten_paths(value).items()})
        else:
            flat[key] = value
    return flat


def encode(value: Any) -> Any:
    """Optuna's categorical choices are None, bool, int, float or str: lists go as JSON text."""
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else value


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


