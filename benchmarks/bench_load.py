"""Search throughput under load: trials per minute of 200 short trials run by 1 and by 4 `dltune worker` processes
on one PostgreSQL study, and by `dltune tune --jobs 4` on its journal file; and the checks that no trial was lost or
run twice.

Each trial trains a small MLP for one epoch on the digits (a fraction of a second), so that the storage and the
workers' coordination, not the training, set the pace. The sampler is random over a continuous space: two trials
with the same parameters would be one trial run twice. The 1-worker run is the baseline of the ratios. Times are
wall clock from the first process's start to the last one's end, start-up (importing torch) included.

Run:  .venv/bin/python benchmarks/bench_load.py [--trials 200] [--storage postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
POSTGRES = os.environ.get("DLTUNE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
RUN_FILES = ("config.toml", "environment.json", "model.safetensors", "metrics.json")


def experiment(trials: int) -> dict:
    """Short trials; a continuous space, sampled at random: no two trials draw the same point."""
    return {"data": {"name": "digits"}, "model": {"hidden": [16]}, "train": {"epochs": 1},
            "search": {"trials": trials, "sampler": "random", "pruner": "none",
                       "space": {"optim.lr": {"low": 1e-4, "high": 3e-1, "log": True},
                                 "optim.weight_decay": {"low": 1e-6, "high": 1e-2, "log": True}}}}


class Load(NamedTuple):
    """One run of the load: what ran and what the storage holds afterwards."""

    what: str
    seconds: float
    states: dict[str, int]  # the study's trials by state
    problems: list[str]  # each broken promise, in words; empty when none

    @property
    def per_minute(self) -> float:
        return self.states.get("COMPLETE", 0) / self.seconds * 60


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dltune", *args], cwd=ROOT, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


def _finish(procs: list[subprocess.Popen], logs: list[Path], timeout: float) -> list[str]:
    problems = []
    for proc, log in zip(procs, logs):
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        if code != 0:
            problems.append(f"{log.name}: exit code {code}: {log.read_text()[-1500:]}")
    return problems


def workers_on_postgres(workers: int, trials: int, folder: Path, storage: str = POSTGRES,
                        timeout: float = 1800) -> Load:
    """`workers` x `dltune worker` on one new PostgreSQL study of `trials` trials (deleted afterwards)."""
    import optuna

    from dltune.experiment.config import load_config
    from dltune.study.tune import create_study, load_tune

    name = f"dltune-load-{uuid.uuid4().hex[:8]}"
    create_study(load_config(experiment(trials)), storage=storage, study=name)
    try:
        logs = [folder / f"worker-{i}.log" for i in range(workers)]
        start = time.perf_counter()
        procs = [_spawn(["worker", "--storage", storage, "--study", name, "--out", str(folder / f"w{i}"),
                         "--threads", "1"], log) for i, log in enumerate(logs)]
        problems = _finish(procs, logs, timeout)
        seconds = time.perf_counter() - start
        study = optuna.load_study(study_name=name, storage=storage)
        load = check(f"{workers} worker{'s' * (workers > 1)} on PostgreSQL", seconds, study.get_trials(),
                     load_tune(storage, name), trials, problems)
    finally:
        for study_name in (name, f"{name}:pruning"):
            try:
                optuna.delete_study(study_name=study_name, storage=storage)
            except KeyError:
                pass
    return load


def jobs_on_journal(jobs: int, trials: int, folder: Path, timeout: float = 1800) -> Load:
    """`dltune tune --jobs J` of `trials` trials: J processes on the journal file in its output folder."""
    import optuna
    import tomli_w

    from dltune.study.tune import load_tune

    config = folder / "load.toml"
    config.write_text(tomli_w.dumps(experiment(trials)))
    out, log = folder / "out", folder / "tune.log"
    start = time.perf_counter()
    problems = _finish([_spawn(["tune", str(config), "--out", str(out), "--jobs", str(jobs), "--json"], log)], [log],
                       timeout)
    seconds = time.perf_counter() - start
    spec = f"journal:{out.resolve() / 'journal.log'}"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "journal.log")))
    study = optuna.load_study(study_name="load", storage=storage)
    return check(f"--jobs {jobs} on a journal file", seconds, study.get_trials(), load_tune(spec, "load"), trials,
                 problems)


def check(what: str, seconds: float, trials: list, data, target: int, problems: list[str]) -> Load:
    """The promises of a shared search, checked on the study's trials (`trials`: Optuna's FrozenTrials; `data`:
    dltune's reading of them): exactly `target` complete, none failed or left running, numbers unique, no point run
    twice, every complete trial's run folder whole; a trial created for a place already taken waits, never run."""
    from optuna.trial import TrialState

    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    problems = list(problems)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if len(complete) != target:
        problems.append(f"{len(complete)} complete trials, not {target}")
    if states.get("RUNNING") or states.get("FAIL"):
        errors = {t.number: t.user_attrs.get("error") for t in trials if t.state == TrialState.FAIL}
        problems.append(f"{states.get('RUNNING', 0)} left running, {states.get('FAIL', 0)} failed: {errors}")
    numbers = [t.number for t in trials]
    if sorted(numbers) != list(range(len(numbers))):
        problems.append(f"trial numbers not unique and consecutive: {sorted(numbers)}")
    waiting_with_params = [t.number for t in trials if t.state == TrialState.WAITING and t.params]
    if waiting_with_params:
        problems.append(f"queued trials that had drawn parameters: {waiting_with_params}")
    points = [json.dumps(t.params, sort_keys=True) for t in trials if t.params]
    if len(set(points)) != len(points):
        problems.append(f"{len(points) - len(set(points))} parameter sets run twice")
    folders = {t.number: t.run_dir for t in data.trials if t.state == "COMPLETE"}
    broken = [n for n, run_dir in folders.items()
              if not run_dir or not all((Path(run_dir) / name).is_file() for name in RUN_FILES)]
    if broken:
        problems.append(f"complete trials without a whole run folder: {broken}")
    if len(set(folders.values())) != len(folders):
        problems.append("two complete trials share a run folder")
    return Load(what, seconds, states, problems)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--storage", default=POSTGRES, help="the PostgreSQL URL (default: %(default)s)")
    args = parser.parse_args()
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 4):
            folder = Path(tmp) / f"pg-{workers}"
            folder.mkdir()
            loads.append(workers_on_postgres(workers, args.trials, folder, args.storage))
        folder = Path(tmp) / "journal-4"
        folder.mkdir()
        loads.append(jobs_on_journal(4, args.trials, folder))
    base = loads[0].per_minute
    print(f"{args.trials} trials of 1 epoch on the digits, on {os.cpu_count()} cores")
    for load in loads:
        print(f"{load.what:>26}: {load.seconds:6.1f} s, {load.per_minute:6.1f} trials/min "
              f"({load.per_minute / base:.2f}x of 1 worker), trials by state {load.states}"
              + ("" if not load.problems else "\n    PROBLEMS: " + "\n    ".join(load.problems)))
    if any(load.problems for load in loads):
        sys.exit(1)


if __name__ == "__main__":
    main()
