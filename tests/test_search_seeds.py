"""More workers and resumed searches draw new points: no finished trial repeats another's parameters, and a
seeded search is the same search in one process, after a resume, trial by trial."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from dltune.experiment.config import load_config
from dltune.study.engines import SAMPLERS, sampler_for
from dltune.study.space import parse_space
from dltune.study.tune import create_study, tune

from conftest import POSTGRES, ROOT
from test_tune import experiment

SPACE = {"optim.lr": {"low": 1e-4, "high": 3e-1, "log": True}, "model.dropout": {"low": 0.0, "high": 0.5}}


def _params(trials: list) -> list[str]:
    return [json.dumps(t.params, sort_keys=True) for t in trials if t.state in ("COMPLETE", "PRUNED")]


@pytest.mark.parametrize("sampler", ["tpe", "random", "qmc"])
def test_a_resumed_search_draws_new_points_and_equals_an_uninterrupted_one(sampler: str, tmp_path: Path) -> None:
    config = load_config(experiment(sampler=sampler, pruner="none", trials=6, space=SPACE))
    tune(config, out_dir=tmp_path / "resumed", trials=3)
    resumed = tune(config, out_dir=tmp_path / "resumed", trials=6)  # a new run of the same study, as after --timeout
    whole = tune(config, out_dir=tmp_path / "whole")
    drawn = _params(resumed.trials)
    assert len(drawn) == 6 and len(set(drawn)) == 6, drawn
    assert drawn == _params(whole.trials)  # the same seed, the same search


def test_every_sampler_gets_a_new_stream_per_trial_from_the_seed_and_the_number() -> None:
    # two processes' samplers (two instances) asked for the same trial number draw the same point; for
    # another number, another point: what makes workers draw apart and one process reproducible
    config = load_config(experiment(space=SPACE))
    space = parse_space(config.search.space, config)
    for name in SAMPLERS.names():
        if name == "grid":
            continue  # a finite grid, each point taken once through the study
        points = []
        for number in (5, 5, 6):
            study = optuna.create_study(sampler=sampler_for(config.search.model_copy(update={"sampler": name}), space))
            for _ in range(number):  # trials before it, so that the number is `number`
                study.enqueue_trial({"optim.lr": 1e-3, "model.dropout": 0.1})
                study.ask()
            trial = study.ask()
            points.append(space.sample(trial))
        assert points[0] == points[1] and points[0] != points[2], name


@pytest.mark.slow
def test_two_workers_and_a_killed_one_on_postgresql_never_repeat_a_trial(tmp_path: Path, pg_study: str) -> None:
    # the default sampler (TPE, seeded by search.seed) with its random start-up phase: a worker that joins
    # and a worker that takes over from a killed one must both draw new points
    slow = {**experiment(trials=10, pruner="none", space=SPACE), "data": {"name": "mnist-5k", "limit": 2000},
            "model": {"hidden": [128]}, "train": {"epochs": 3}}
    create_study(load_config(slow), storage=POSTGRES, study=pg_study)

    def worker(name: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "dltune", "worker", "--storage", POSTGRES, "--study", pg_study,
                                 "--out", str(tmp_path / name), "--threads", "1"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    doomed = worker("killed")
    deadline = time.time() + 120
    study = optuna.load_study(study_name=pg_study, storage=POSTGRES)
    def mid_trial() -> bool:  # two trials done, and one that has reported an epoch (so it has beaten)
        trials = study.get_trials(deepcopy=False)
        return (sum(t.state == TrialState.COMPLETE for t in trials) >= 2
                and any(t.state == TrialState.RUNNING and t.intermediate_values for t in trials))

    caught = False
    while time.time() < deadline and not (caught := mid_trial()):
        time.sleep(0.02)
    assert caught, "never saw the first worker mid-trial after two finished trials"
    # SIGKILL mid-trial, after its first heartbeat: the trial goes stale after the 5 s grace period (a kill before
    # the first heartbeat waits for sharing.ORPHAN_SECONDS, 60 s, and has a test of its own in test_tune.py)
    doomed.kill()
    doomed.wait()
    helpers = [worker("a"), worker("b")]  # together, at once
    outputs = [h.communicate(timeout=300) for h in helpers]
    assert all(h.returncode == 0 for h in helpers), outputs
    trials = study.get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 10 and not [t for t in trials if t.state == TrialState.RUNNING]
    drawn = [json.dumps(t.params, sort_keys=True) for t in finished]
    assert len(set(drawn)) == len(drawn), sorted(drawn)
