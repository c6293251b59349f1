"""The members of an ensemble: the top K completed trials of a search, ranked by its validation objective, or every
seed of one ablation variant; found from the output folder (its study.db or journal.log) or a storage URL."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from dltune.errors import ConfigError, DltuneError, mask_password
from dltune.run.saved import SavedRun, read_run
from dltune.study.engines import connect, quiet, stored_studies

__all__ = ["Member", "NoMembers", "Selection", "select"]


class NoMembers(DltuneError):
    """The source holds no trained model to combine: a search without a completed trial, an ablation variant
    without a completed run. The source is no bad input: the job that made it failed (`dltune ensemble` exits 1)."""


@dataclass(frozen=True)
class Member:
    """One trained model of the source: its name there, its run folder read back, and the value it was ranked by."""

    name: str  # trial-7 | baseline/seed-2
    run: SavedRun
    ranked_value: float | None


@dataclass(frozen=True)
class Selection:
    kind: str  # search | ablation
    study: str
    storage: str  # masked
    ranked_by: str  # e.g. "val.accuracy (maximize)", or "ablation variant 'baseline', every seed"
    members: list[Member]


def select(source: str | Path | None, *, top: int | None = None, variant: str | None = None,
           storage: str | None = None, study: str | None = None) -> Selection:
    """The members named by SOURCE (a search's or an ablation's output folder) or `storage`/`study`."""
    spec = storage or _storage_of(source)
    name, kind = _study_of(spec, study)
    if kind == "tune":
        if variant is not None:
            raise ConfigError(f"--variant {variant}: {name!r} is a search, not an ablation; its members are its top "
                              "trials (--top K)")
        return _search_members(spec, name, 5 if top is None else top)
    if top is not None:
        raise ConfigError(f"--top {top}: {name!r} is an ablation; its members are every seed of one variant "
                          "(--variant NAME)")
    return _ablation_members(spec, name, variant)


def _storage_of(source: str | Path | None) -> str:
    if source is None:
        raise ConfigError("SOURCE: give a search's or an ablation's output folder, or --storage URL with --study")
    folder = Path(source)
    if (folder / "study.db").is_file():
        return f"sqlite:///{folder.resolve() / 'study.db'}"
    if (folder / "journal.log").is_file():
        return f"journal:{folder.resolve() / 'journal.log'}"
    raise ConfigError(f"SOURCE {folder}: no study.db or journal.log here; give the output folder of "
                      "`dltune tune` or `dltune ablate`, or --storage URL")


def _study_of(spec: str, name: str | None) -> tuple[str, str]:
    """The dltune study `name` in `spec` (None: the only search or ablation there), and its kind."""
    with quiet():
        storage = connect(spec)
        summaries = stored_studies(spec, storage)
    kinds = {study: attrs["dltune"] for study, attrs in summaries.items()
             if attrs.get("dltune") in ("tune", "ablation")}
    if name is None:
        if len(kinds) != 1:
            found = f"{', '.join(sorted(kinds))}; choose one with --study" if kinds else "no search or ablation"
            raise ConfigError(f"{mask_password(spec)}: holds {found}")
        name = next(iter(kinds))
    if name not in kinds:
        listed = f"; its searches and ablations: {', '.join(sorted(kinds))}" if kinds else ""
        raise ConfigError(f"--study {name}: {mask_password(spec)} holds no search or ablation of that name{listed}")
    return name, kinds[name]


def _search_members(spec: str, name: str, top: int) -> Selection:
    from dltune.study.studies import load_tune

    if top < 1:
        raise ConfigError(f"--top {top}: must be 1 or more")
    data = load_tune(spec, name)
    objective, direction = data.objectives[0], data.directions[0]
    split, _, metric = objective.partition(".")
    # the validation objective: a val.* objective's own value, else the same metric on the validation split
    ranked_by = objective if split == "val" else f"val.{metric}"
    complete = [t for t in data.trials if t.state == "COMPLETE"]
    if not complete:
        raise NoMembers(f"no member: the search {name!r} has no completed trial ({len(data.trials)} pruned or "
                        "failed)")
    if len(complete) < top:
        raise ConfigError(f"--top {top}: {name!r} has {len(complete)} completed trial"
                          f"{'' if len(complete) == 1 else 's'}; lower --top or run more trials")

    def value(t) -> float:
        v = t.values[0] if split == "val" else (t.epochs[-1].get("val") or {}).get(metric) if t.epochs else None
        if v is None:
            raise ConfigError(f"trial {t.number}: has no {ranked_by} to rank it by (the search's objective is "
                              f"{objective}; ensembles rank trials on the validation split)")
        return float(v)

    sign = -1.0 if direction == "maximize" else 1.0
    values = {t.number: value(t) for t in complete}
    ranked = sorted(complete, key=lambda t: (sign * values[t.number] if math.isfinite(values[t.number]) else math.inf,
                                             t.number))
    members = [Member(f"trial-{t.number}", _run_of(t.run_dir, f"trial-{t.number}"), values[t.number])
               for t in ranked[:top]]
    return Selection("search", name, mask_password(spec), f"{ranked_by} ({direction})", members)


def _ablation_members(spec: str, name: str, variant: str | None) -> Selection:
    from dltune.study.ablate import load_ablation

    data = load_ablation(spec, name)
    names = [v.name for v in data.variants]
    if variant is None:
        raise ConfigError(f"--variant: {name!r} is an ablation; choose the variant whose seeds to combine: "
                          f"{', '.join(names)}")
    if variant not in names:
        raise ConfigError(f"--variant {variant}: no such variant in {name!r}; variants: {', '.join(names)}")
    runs = [r for r in data.of(variant) if r.status == "completed"]
    if not runs:
        raise NoMembers(f"no member: the variant {variant!r} of {name!r} has no completed run of "
                        f"{len(data.of(variant))} (diverged or stopped)")
    members = [Member(f"{variant}/seed-{r.seed}", _run_of(r.run_dir, f"{variant}/seed-{r.seed}"), None) for r in runs]
    return Selection("ablation", name, mask_password(spec), f"ablation variant {variant!r}, every seed", members)


def _run_of(run_dir: str | None, name: str) -> SavedRun:
    if not run_dir:
        raise ConfigError(f"{name}: the storage records no run folder for it")
    return read_run(run_dir, name)
