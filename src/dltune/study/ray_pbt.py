"""PBT on Ray Tune (`dltune tune --backend ray` with search.pruner = "pbt"): Ray's PopulationBasedTraining runs the
population, and every member's segments are recorded in the search's Optuna study as the optuna backend records
them (study.pbt_search), so that the report, its lineage and best.toml are the same.

A member is one Ray trial of the function `run_member`. It trains with dltune's `train` and pauses at every
generation's end (every search.interval epochs), where it reports its value with its checkpoint through
`tune.report`: the run folder's checkpoint and what the member is (member.json: its number, its epoch, its
experiment's overrides). Ray's PBT, synchronous here (synch=True, as dltune's own: every member reaches the
generation's end before any is decided), restarts a member of its bottom quantile from a top member's checkpoint with
explored settings; the restarted member finds in member.json whose state it goes on from, and writes its new settings
as a train.changes entry from the next epoch on. Ray draws its explores with Python's random module, unseeded: a Ray
PBT search is not reproduced decision for decision, as the optuna backend's is. The first generation's settings are
the optuna backend's (pbt_search.first_settings: warm starts, then seeded draws).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import optuna
from optuna.trial import TrialState, create_trial
from ray import tune
from ray.tune import Callback, Checkpoint
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.stopper import Stopper

from dltune.errors import ConfigError
from dltune.experiment.config import ExperimentConfig, override, to_toml
from dltune.files import claim_dir, write_text
from dltune.run.checkpoints import CHECKPOINT, Paused
from dltune.study.pbt import boundaries, within
from dltune.study.pbt_search import first_settings, latest_segments, settings_of
from dltune.study.ray_trials import EPOCH, OBJECTIVE, PAYLOAD  # Ray's time, metric, and dltune's record
from dltune.study.records import TrialRecord, run_attrs
from dltune.study.space import Entry, encode
from dltune.study.studies import Prepared, record, stored_trial
from dltune.study.trials import handed_to_train, lookup, objective_values, trial_data, trial_track
from dltune.tuner.auto import train

__all__ = ["MEMBER", "Population", "mutations", "run_member", "run_ray_pbt"]

# a member's number in its Ray trial's first config (the space's keys sit beside it) and in its trial's name; an
# exploit copies the donor's whole config, this too, so a running member reads its number from its trial's name
MEMBER = "member"
META = "member.json"  # in a reported checkpoint: the member, its epoch, its experiment's overrides


@dataclass(frozen=True)
class Population:
    """What every member needs, sent to Ray's workers once."""

    prepared: Prepared
    out: Path
    study_name: str
    per_epoch: str
    keys: tuple[str, ...]  # the space's keys, which PBT changes
    firsts: tuple[dict[str, Any], ...]  # each member's first settings
    ends: tuple[int, ...]  # the epochs where generations end
    perturb: tuple[float, ...]


def mutations(entries: Sequence[Entry]) -> dict[str, Any]:
    """Ray's hyperparam_mutations for the space: where a key is resampled from."""
    out: dict[str, Any] = {}
    for e in entries:
        if e.kind == "categorical":
            out[e.path] = list(e.choices)
        elif e.kind == "int":
            out[e.path] = tune.lograndint(int(e.low), int(e.high) + 1) if e.log else tune.randint(int(e.low),
                                                                                                  int(e.high) + 1)
        elif e.step is not None:
            out[e.path] = tune.quniform(e.low, e.high, e.step)
        else:
            out[e.path] = tune.loguniform(e.low, e.high) if e.log else tune.uniform(e.low, e.high)
    return out


def _clipped(entries: Sequence[Entry]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Ray's custom_explore_fn: a perturbed value kept within its entry's bounds and on its step's grid, as the
    optuna backend's explore keeps it (Ray's own perturbation does not)."""
    def clip(config: dict[str, Any]) -> dict[str, Any]:
        for e in entries:
            if e.kind != "categorical":
                config[e.path] = within(e, config[e.path])
        return config

    return clip


def run_ray_pbt(config: ExperimentConfig, prepared: Prepared, study: optuna.Study, *, out: Path,
                resources: dict[str, float], on_trial: Callable[[TrialRecord], None] | None,
                should_stop: Callable[[], bool] | None) -> None:
    """The population on the Ray instance this process is connected to, each member with `resources`, recorded in
    `study` as it goes; `should_stop()` true ends the run at Ray's next step (its members are recorded as far as they
    reached). Afterwards only whole runs are left in out/trials: the members' last."""
    search, base = config.search, prepared.base
    if latest_segments(study.get_trials(deepcopy=False)):
        raise ConfigError("--backend ray: this PBT search was started already, and Ray's PBT cannot go on from where "
                          "it stopped; run it on the optuna backend (leave --backend out), which resumes it, or "
                          "start it again in a new --out folder")
    entries = list(prepared.space.entries)
    population = Population(
        prepared, out, study.study_name, prepared.objectives[0].replace("test.", "val.", 1),
        tuple(e.path for e in entries),
        tuple(first_settings(m, search, entries, ()) for m in range(search.population)),
        tuple(boundaries(base.train.epochs, search.interval)), tuple(search.perturb))
    firsts = population.firsts
    space: dict[str, Any] = {MEMBER: tune.grid_search(list(range(search.population)))}
    for e in entries:
        space[e.path] = tune.sample_from(_first(firsts, e.path))
    scheduler = PopulationBasedTraining(
        time_attr=EPOCH, metric=OBJECTIVE, mode="max" if prepared.directions[0] == "maximize" else "min",
        perturbation_interval=search.interval, hyperparam_mutations=mutations(entries),
        quantile_fraction=search.quantile, resample_probability=search.resample_probability,
        # typed as a pair; Ray draws one factor of any number
        perturbation_factors=cast(tuple[float, float], tuple(search.perturb)), custom_explore_fn=_clipped(entries),
        log_config=False, synch=True)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(run_member, population=population), resources),
        param_space=space,
        # every member live at once (Ray's resources decide how many train): synchronous PBT pauses a member at a
        # generation's end, which frees its CPUs for one still on its way there
        tune_config=tune.TuneConfig(scheduler=scheduler, num_samples=1, reuse_actors=False,
                                    max_concurrent_trials=search.population, trial_name_creator=_name,
                                    trial_dirname_creator=_name),
        run_config=tune.RunConfig(name="ray", storage_path=str(out), verbose=0,
                                  stop=_Stop(base.train.epochs, should_stop),
                                  callbacks=[_Recorder(study, prepared, out, population, on_trial)]))
    try:
        tuner.fit()
    finally:
        for folder in (out / "trials").glob("member-*"):  # a member's paused or exploited runs, not whole
            if not (folder / "metrics.json").exists():
                shutil.rmtree(folder, ignore_errors=True)


class _Stop(Stopper):
    """Ends a member at its last epoch (before PBT sees that report: Ray asks its stopper first, and would otherwise
    pause and restart a member there, which trains its last generation again), and the whole Ray run once
    `should_stop()` says so (the CLI's first Ctrl-C)."""

    def __init__(self, epochs: int, should_stop: Callable[[], bool] | None) -> None:
        self._epochs, self._should_stop = epochs, should_stop

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return int(result.get(EPOCH, 0)) >= self._epochs

    def stop_all(self) -> bool:
        return self._should_stop is not None and self._should_stop()

    def __getstate__(self) -> dict[str, Any]:
        return {}


def _name(trial: Any) -> str:
    """A Ray trial's name and folder: its member's number, which it keeps through its exploits."""
    return f"member-{trial.config[MEMBER]}"


def _first(firsts: Sequence[Mapping[str, Any]], path: str) -> Callable[[Any], Any]:
    """A member's first value of `path`, for Ray's sample_from (the member's number is in its config)."""
    def value(config: dict[str, Any]) -> Any:
        return firsts[config[MEMBER]][path]

    return value


def run_member(config: dict[str, Any], population: Population) -> None:
    """One member: from the checkpoint Ray gives it (its own after a pause, a top member's after an exploit), or
    from the start; trains to each generation's end, reports the value there with its checkpoint, and goes on."""
    member = int(tune.get_context().get_trial_name().rpartition("-")[2])
    settings = {key: config[key] for key in population.keys}
    base = population.prepared.base
    epochs = base.train.epochs
    given = tune.get_checkpoint()
    run_dir = claim_dir(population.out / "trials" / f"member-{member}")
    segment: dict[str, Any] = {"member": member, "start": 0, "source": None, "copied_from": None, "changed": {}}
    overrides: dict[str, Any] = dict(settings)
    if given is not None:
        with given.as_directory() as folder:
            meta = json.loads((Path(folder) / META).read_text(encoding="utf-8"))
            shutil.copytree(Path(folder) / CHECKPOINT, run_dir / CHECKPOINT)
        overrides, start = dict(meta["overrides"]), meta["epoch"]
        before = settings_of(overrides)
        changed = {k: _how(before[k], v, population.perturb) for k, v in settings.items() if v != before[k]}
        if changed:
            overrides["train.changes"] = [*overrides.get("train.changes", []), {"epoch": start + 1, **settings}]
        segment.update(start=start, source=meta["segment"],
                       copied_from=meta["member"] if meta["member"] != member else None, changed=changed)
    run_config = override(base, overrides)
    if given is not None:
        write_text(run_dir / "config.toml", to_toml(run_config))
    values: dict[int, float] = {}

    def on_epoch(epoch: int, epoch_record: Mapping[str, Any]) -> str | None:
        value = lookup(epoch_record, population.per_epoch)
        if epoch <= segment["start"] or value is None or not math.isfinite(value):
            return None
        values[epoch] = value
        if epoch in population.ends and epoch < epochs:
            return "pause"
        if epoch < epochs:
            tune.report({EPOCH: epoch, OBJECTIVE: value})
        return None

    data = trial_data(population.prepared, run_config)
    resume = given is not None
    while True:
        try:
            result = train(run_config, on_epoch=on_epoch, out_dir=run_dir, data=handed_to_train(run_config, data),
                           model=population.prepared.model,
                           track=trial_track(population.study_name, member, population.out), resume=resume)
        except Paused as paused:  # a generation's end: reported with the checkpoint, then on (unless Ray stops it)
            epoch = paused.epoch
            name = f"{member}-{epoch}-{time.monotonic_ns()}"
            seg = {**segment, "end": epoch, "values": {e: v for e, v in values.items() if e > segment["start"]},
                   "overrides": overrides, "name": name}
            with tempfile.TemporaryDirectory() as folder:
                shutil.copytree(run_dir / CHECKPOINT, Path(folder) / CHECKPOINT,
                                ignore=shutil.ignore_patterns(".lock"))
                (Path(folder) / META).write_text(json.dumps({"member": member, "epoch": epoch, "segment": name,
                                                             "overrides": overrides}), encoding="utf-8")
                tune.report({EPOCH: epoch, OBJECTIVE: values[epoch], PAYLOAD: json.dumps({"segment": seg})},
                            checkpoint=Checkpoint.from_directory(folder))
            segment = {**segment, "start": epoch, "source": name, "copied_from": None, "changed": {}}
            resume = True
            continue
        break
    final: dict[str, Any] = {"record": result.record()}
    if result.status == "diverged":
        final["error"] = "diverged"
    else:
        final["values"], _ = objective_values(result, population.prepared.objectives, run_dir, data)
    seg = {**segment, "end": epochs, "values": {e: v for e, v in values.items() if e > segment["start"]},
           "overrides": overrides, "name": f"{member}-{epochs}-{time.monotonic_ns()}"}
    tune.report({EPOCH: epochs, OBJECTIVE: values.get(epochs, math.nan),
                 PAYLOAD: json.dumps({"segment": seg, "final": final}, default=str)})


def _how(before: Any, after: Any, perturb: Sequence[float]) -> str:
    """How Ray's explore changed a value: by a perturb factor, or resampled."""
    if isinstance(before, (int, float)) and isinstance(after, (int, float)) and before:
        for factor in perturb:
            if math.isclose(after, before * factor, rel_tol=1e-9):
                return f"×{factor:g}"
    return "resampled"


class _Recorder(Callback):
    """On the driver: each segment a member reports, written into the study as the optuna backend writes it."""

    def __init__(self, study: optuna.Study, prepared: Prepared, out: Path, population: Population,
                 on_trial: Callable[[TrialRecord], None] | None) -> None:
        self._study, self._prepared, self._out, self._population = study, prepared, out, population
        self._on_trial = on_trial
        self._numbers: dict[str, int] = {}  # a segment's name -> its trial's number

    def __getstate__(self) -> dict[str, Any]:
        return {}  # pickled into Ray's experiment folder with the run's settings; the study is its record

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        payload = json.loads(result.get(PAYLOAD) or "{}")
        if "segment" in payload:
            self._store(payload["segment"], payload.get("final"))

    def _store(self, seg: dict[str, Any], final: Mapping[str, Any] | None) -> None:
        overrides = seg.pop("overrides")
        values = {int(e): v for e, v in seg.pop("values").items()}
        name = seg.pop("name")
        seg["source"] = self._numbers.get(seg["source"]) if seg["source"] is not None else None
        seg["generation"] = self._population.ends.index(seg["end"])
        settings = settings_of(overrides)
        distributions = {e.path: e.distribution() for e in self._prepared.space.entries}
        attrs: dict[str, Any] = {"pbt": seg, "overrides": overrides}
        state, value = TrialState.PRUNED, None
        if final is not None:
            attrs.update(run_attrs(final["record"], self._out))
            if "values" in final:
                state, value = TrialState.COMPLETE, float(final["values"][0])
        trial = create_trial(state=state, value=value, params={k: encode(v) for k, v in settings.items()},
                             distributions=distributions, user_attrs=attrs, intermediate_values=values)
        self._study.add_trial(trial)
        number = max(t.number for t in self._study.get_trials(deepcopy=False))
        self._numbers[name] = number
        if self._on_trial is not None:
            self._on_trial(record(stored_trial(self._study, number)))
