"""Warm starts: settings a search tries first (`[search] enqueue`, `dltune tune --enqueue FILE`), each as a trial of
the search's own space, queued in order before any sampled trial and never twice.

An enqueued setting is an inline table of the space's keys, or an experiment file (an earlier search's best.toml, a
colleague's settings), whose values of the space's keys the trial takes. What it sets must be a point of the space:
a key outside the space would make a trial of another experiment than the search's, and a value outside an entry's
range one that the sampler could never propose; both are refused, naming the setting and the key."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna

from dltune.errors import ConfigError
from dltune.experiment.config import ExperimentConfig, load_config, override
from dltune.study.space import Entry, SearchSpace, encode, flatten_paths

__all__ = ["enqueue_starts", "warm_starts"]

# sections that say how a search runs or where, not what a trial trains: an experiment file may differ in them
_RUNNING = ("search", "ablation", "code", "tracking", "compress")


def warm_starts(enqueue: Sequence[str | Mapping[str, Any]], base: ExperimentConfig, space: SearchSpace
                ) -> list[dict[str, Any]]:
    """Each setting of `enqueue` as the Optuna parameters of a trial of `space` over `base` (the search's experiment
    without its [search]); a setting that is not a point of the space is a ConfigError that names it."""
    return [_params(f"search.enqueue[{i}]", _config(f"search.enqueue[{i}]", item, base, space), base, space)
            for i, item in enumerate(enqueue)]


def enqueue_starts(study: optuna.Study, starts: list[dict[str, Any]]) -> None:
    """Queue each start as a WAITING trial, in order, unless the study holds a trial of the same parameters already
    (queued, running or finished, by an earlier run of this search)."""
    for k, params in enumerate(starts):
        study.enqueue_trial(params, user_attrs={"enqueued": k}, skip_if_exists=True)


def _config(where: str, item: str | Mapping[str, Any], base: ExperimentConfig, space: SearchSpace
            ) -> ExperimentConfig:
    """The experiment that the setting describes: `base` with an inline table's keys, or an experiment file."""
    paths = {e.path for e in space.entries}
    if isinstance(item, Mapping):
        changes = flatten_paths(item)
        outside = sorted(set(changes) - paths)
        if outside:
            raise ConfigError(f"{where}: {outside[0]} is not a key of [search.space] (its keys: "
                              f"{', '.join(sorted(paths))}); a trial of the search changes those only")
        try:
            return override(base, changes)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    try:
        config = load_config(Path(item))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    theirs, ours = _flat(config.model_dump(mode="json")), _flat(base.model_dump(mode="json"))
    differ = sorted(k for k in theirs.keys() | ours.keys()
                    if theirs.get(k) != ours.get(k) and k.split(".")[0] not in _RUNNING and k not in paths
                    and not any(k.startswith(f"{p}.") for p in paths) and k != "parallel.threads")
    if differ:
        raise ConfigError(f"{where} ({item}): sets {differ[0]} = {theirs.get(differ[0])!r} where the search's "
                          f"experiment has {ours.get(differ[0])!r}; a trial of the search changes only the keys of "
                          "[search.space]")
    return config


def _params(where: str, config: ExperimentConfig, base: ExperimentConfig, space: SearchSpace) -> dict[str, Any]:
    """The Optuna parameters of `config` in `space` (conditions first, as SearchSpace.sample draws them)."""
    dumped = _flat(config.model_dump(mode="json"))
    chosen: dict[str, Any] = {}
    params: dict[str, Any] = {}
    for e in space.entries:
        if any(chosen.get(path) not in values for path, values in e.when):
            continue
        value = dumped[e.path]
        chosen[e.path] = value
        params.update(_entry_params(where, e, value))
    return params


def _entry_params(where: str, e: Entry, value: Any) -> dict[str, Any]:
    if e.kind == "categorical":
        if encode(value) not in [encode(c) for c in e.choices]:
            raise ConfigError(f"{where}: {e.path} = {value!r} is not one of the space's choices "
                              f"({', '.join(map(repr, e.choices))})")
        return {e.path: encode(value)}
    if e.kind == "layers":
        depth, widths = len(value), list(value)
        if not e.depth[0] <= depth <= e.depth[1] or not all(e.low <= w <= e.high for w in widths):
            raise ConfigError(f"{where}: {e.path} = {value!r} is outside the space's layers (depth {e.depth[0]} to "
                              f"{e.depth[1]}, widths {int(e.low)} to {int(e.high)})")
        return {f"{e.path}.depth": depth, **{f"{e.path}[{i}]": w for i, w in enumerate(widths)}}
    if not e.low <= value <= e.high or (e.kind == "int" and value != int(value)):
        raise ConfigError(f"{where}: {e.path} = {value!r} is outside the space's range ({e.low:g} to {e.high:g})")
    return {e.path: int(value) if e.kind == "int" else float(value)}


def _flat(raw: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A dumped experiment by dotted path (its tables flattened; lists, and the tables of free keys such as
    model.args and search.space, kept as values)."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, Mapping) and key not in ("space", "args", "variants"):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
