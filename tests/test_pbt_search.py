"""PBT searches (search.pruner = "pbt") end to end: from the CLI and from Python; each member's generation trained
once; a member that exploits goes on from exactly the state of the member it copied (its run is reproduced by
`dltune train` on its experiment alone, and its first epochs are its donor's); the same lineage with --jobs 2, with
two `dltune worker`s on PostgreSQL, and after a SIGKILL and a resume, as in one uninterrupted process."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import optuna
import pytest
import tomli_w
from optuna.trial import FrozenTrial, TrialState

from conftest import POSTGRES, ROOT, run_main, server_trials
from dltune import load_config, train
from dltune.study.pbt_search import latest_segments
from dltune.study.tune import create_study, tune

EXPERIMENT: dict[str, Any] = {
    "data": {"name": "digits", "limit": 400}, "model": {"hidden": [16]},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "parallel": {"threads": 1}, "train": {"epochs": 4},
    "search": {"pruner": "pbt", "population": 4, "interval": 1, "seed": 3,
               "space": {"optim.lr": {"low": 1e-3, "high": 0.5, "log": True},
                         "optim.weight_decay": {"low": 1e-6, "high": 1e-2, "log": True}}}}
GENERATIONS = 4


def lineage(trials: list[FrozenTrial]) -> dict[tuple[int, int], tuple]:
    """What PBT decided and measured, by (member, generation): how the segment ended, whose state it copied, its
    settings, and its values per epoch. Trial numbers are left out: they depend on the order workers ask in."""
    return {key: (t.state.name, t.user_attrs["pbt"]["copied_from"], t.user_attrs["pbt"]["changed"], t.params,
                  dict(t.intermediate_values)) for key, t in sorted(latest_segments(trials).items())}


def study_trials(out: Path, journal: bool = False) -> list[FrozenTrial]:
    storage = (optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "journal.log")))
               if journal else f"sqlite:///{out / 'study.db'}")
    return optuna.load_study(study_name="pbt", storage=storage).get_trials()


def segment_states(db: Path) -> list[str]:
    """The states of a SQLite study's trials, read without Optuna: opening the file as an Optuna storage would create
    its tables, beside the search's own process that is creating them (which then fails)."""
    if not db.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as connection:
            return [state for (state,) in connection.execute("SELECT state FROM trials")]
    except sqlite3.Error:  # no tables yet, or locked for a moment
        return []


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """One uninterrupted PBT search in this process, from Python."""
    out = tmp_path_factory.mktemp("pbt") / "out"
    data = tune(load_config(EXPERIMENT), out_dir=out, experiment="pbt")
    return out, data


def test_a_pbt_search_trains_each_members_generation_once(reference: tuple[Path, Any]) -> None:
    out, data = reference
    trials = study_trials(out)
    assert len(trials) == 4 * GENERATIONS  # nothing trained twice, nothing missing
    assert sorted(latest_segments(trials)) == [(m, g) for m in range(4) for g in range(GENERATIONS)]
    assert {t.state for t in trials if t.user_attrs["pbt"]["generation"] < GENERATIONS - 1} == {TrialState.PRUNED}
    assert {t.state for t in trials if t.user_attrs["pbt"]["generation"] == GENERATIONS - 1} == {TrialState.COMPLETE}
    exploits = [t for t in trials if t.user_attrs["pbt"]["copied_from"] is not None]
    assert len(exploits) == GENERATIONS - 1  # the one worst member of 4 copies, at every decision
    # every member's epochs: 4 members × 4 epochs, as one run each
    assert sum(len(t.epochs) for t in data.trials) == 16
    # only the members' whole runs are left: the paused segments' folders went once the next generation ended
    assert sorted(p.name for p in (out / "trials").iterdir()) == sorted(
        f"trial-{t.number}" for t in trials if t.state == TrialState.COMPLETE)


def test_an_exploiting_member_goes_on_from_exactly_its_donors_state(reference: tuple[Path, Any],
                                                                    tmp_path: Path) -> None:
    out, _ = reference
    trials = study_trials(out)
    by_number = {t.number: t for t in trials}
    final = [t for t in trials if t.state == TrialState.COMPLETE]
    copier = next(t for t in final if any(c["epoch"] > 1 for c in t.user_attrs["overrides"].get("train.changes", [])))
    history = json.loads((out / "trials" / f"trial-{copier.number}" / "metrics.json").read_text())["epochs"]

    # its epochs before each copy are those of the segments its state came from, value for value
    segment, seen = copier, 0
    while segment.user_attrs["pbt"]["source"] is not None:
        segment = by_number[segment.user_attrs["pbt"]["source"]]
        for epoch, value in segment.intermediate_values.items():
            assert history[epoch - 1]["val"]["accuracy"] == value
            seen += 1
    assert seen == GENERATIONS - 1

    # and `dltune train` on its experiment alone (train.changes: the lineage's settings, from each copy's epoch on)
    # trains the same run: the same losses, accuracies and lrs in every epoch, the same test results
    again = train(load_config(out / "trials" / f"trial-{copier.number}" / "config.toml"), out_dir=tmp_path / "again")
    for mine, theirs in zip(again.epochs, history, strict=True):
        assert (mine["train"], mine["val"], mine["lr"]) == (theirs["train"], theirs["val"], theirs["lr"])
    assert again.test == json.loads((out / "trials" / f"trial-{copier.number}" / "metrics.json").read_text())["test"]


def test_best_toml_is_the_best_members_schedule(reference: tuple[Path, Any], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out, data = reference
    best = next(t for t in data.trials if t.number == data.best[0])
    written = tomllib.loads((out / "best.toml").read_text())
    assert written["optim"]["lr"] == best.params["optim.lr"]
    assert written["train"].get("changes", []) == best.params.get("train.changes", [])
    done = run_main(capsys, "train", str(out / "best.toml"), "--out", str(tmp_path / "best"), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["test"] == best.test


def test_pbt_from_the_cli_with_two_jobs_reaches_the_same_lineage(reference: tuple[Path, Any], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pbt.toml").write_text(tomli_w.dumps(EXPERIMENT))
    done = run_main(capsys, "tune", "pbt.toml", "--out", str(tmp_path / "out"), "--jobs", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    trials = study_trials(tmp_path / "out", journal=True)
    assert len(trials) == 4 * GENERATIONS
    assert lineage(trials) == lineage(study_trials(reference[0]))


def test_a_search_stopped_by_its_timeout_goes_on_to_the_same_lineage(reference: tuple[Path, Any], tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pbt.toml").write_text(tomli_w.dumps(EXPERIMENT))
    cut = run_main(capsys, "tune", "pbt.toml", "--out", "out", "--timeout", "0.01", cwd=tmp_path)
    assert cut.returncode == 1 and "no member trained to the end yet" in cut.stderr
    assert "The same command goes on from where the members are." in cut.stdout
    again = run_main(capsys, "tune", "pbt.toml", "--out", "out", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "PBT: 4 members trained to the end, 12 segments of earlier generations, 0 failed · 16 epochs" in again.stdout
    assert lineage(study_trials(tmp_path / "out")) == lineage(study_trials(reference[0]))


def test_warm_starts_are_the_first_members_settings(tmp_path: Path) -> None:
    search = {**EXPERIMENT["search"], "population": 2, "enqueue": [{"optim.lr": 0.02}]}
    optim = {**EXPERIMENT["optim"], "weight_decay": 1e-4}
    tune(load_config({**EXPERIMENT, "optim": optim, "train": {"epochs": 2}, "search": search}), out_dir=tmp_path,
         experiment="pbt")
    first = {key: t.params for key, t in latest_segments(study_trials(tmp_path)).items() if key[1] == 0}
    assert first[(0, 0)] == {"optim.lr": 0.02, "optim.weight_decay": 1e-4}  # the key it leaves out: the experiment's
    assert 1e-3 <= first[(1, 0)]["optim.lr"] <= 0.5 and first[(1, 0)]["optim.lr"] != 0.02  # drawn from the space


@pytest.mark.parametrize(("args", "message"), [
    (("--trials", "5"), '--trials: not with search.pruner = "pbt"'),
    (("--backend", "ray", "--jobs", "2"), "--jobs 2: not with --backend ray"),
])
def test_what_a_pbt_search_cannot_take_is_refused(args: tuple[str, ...], message: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pbt.toml").write_text(tomli_w.dumps(EXPERIMENT))
    done = run_main(capsys, "tune", "pbt.toml", "--out", str(tmp_path / "out"), *args, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_space_key_that_cannot_change_mid_run_is_refused(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    search = {**EXPERIMENT["search"], "space": {"model.hidden": [[8], [16]], "optim.lr": [0.01, 0.1]}}
    (tmp_path / "pbt.toml").write_text(tomli_w.dumps({**EXPERIMENT, "search": search}))
    done = run_main(capsys, "tune", "pbt.toml", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "search.space.model.hidden: PBT (search.pruner = \"pbt\") changes its settings during training, and " \
           "model.hidden cannot change mid-run" in done.stderr
    assert not (tmp_path / "out").exists()


def _worker(name: str, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dltune", "worker", "--storage", POSTGRES, "--study", name,
                             "--out", str(out), "--threads", "1"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_postgresql_workers_reach_the_same_lineage(reference: tuple[Path, Any], tmp_path: Path,
                                                       pg_study: str) -> None:
    create_study(load_config(EXPERIMENT), storage=POSTGRES, study=pg_study)
    workers = [_worker(pg_study, tmp_path / "out") for _ in range(2)]  # one output folder, shared
    outputs = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    trials = server_trials(pg_study)
    assert len(trials) == 4 * GENERATIONS  # each generation queued once, each segment taken by one worker
    assert lineage(trials) == lineage(study_trials(reference[0]))
    assert all("segment" not in err for _, err in outputs)


@pytest.mark.slow
def test_a_search_killed_mid_run_and_resumed_reaches_the_same_lineage(reference: tuple[Path, Any],
                                                                      tmp_path: Path) -> None:
    slow = {**EXPERIMENT, "data": {"name": "mnist-5k", "limit": 1500}, "model": {"hidden": [64]}}
    (tmp_path / "pbt.toml").write_text(tomli_w.dumps(slow))
    whole = tune(load_config(tmp_path / "pbt.toml"), out_dir=tmp_path / "whole", experiment="pbt")
    assert len(whole.trials) == 4 * GENERATIONS
    command = [sys.executable, "-m", "dltune", "tune", "pbt.toml", "--out", "killed"]
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 600  # a loaded CI machine starts a process in tens of seconds
    states: list[str] = []
    while time.monotonic() < deadline and proc.poll() is None:  # mid-search: 6 segments ended, and another trains
        states = segment_states(tmp_path / "killed" / "study.db")
        if states.count("PRUNED") >= 6 and "RUNNING" in states:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    assert "RUNNING" in states, f"the search never reached its 7th segment: {(tmp_path / 'first.log').read_text()}"
    running = [t for t in study_trials(tmp_path / "killed") if t.state == TrialState.RUNNING]
    before = {t.number: (t.state, t.params, dict(t.intermediate_values)) for t in study_trials(tmp_path / "killed")
              if t.state in (TrialState.PRUNED, TrialState.COMPLETE)}
    assert 6 <= len(before) < 4 * GENERATIONS, "the kill did not land mid-search"
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert re.search(r"^trial \d+: member \d, epochs \d-\d", again.stdout, re.MULTILINE)  # a line per segment
    trials = study_trials(tmp_path / "killed")
    assert lineage(trials) == lineage(study_trials(tmp_path / "whole"))  # the same decisions, the same values
    after = {t.number: (t.state, t.params, dict(t.intermediate_values)) for t in trials}
    assert all(after[n] == v for n, v in before.items())  # what had ended before the kill is kept as it was
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert running
    for killed in running:  # training when killed: failed as a dead worker's, and trained again from its checkpoint
        assert after[killed.number][0] == TrialState.FAIL
        assert [t.user_attrs["pbt"] for t in trials if t.system_attrs.get("failed_trial") == killed.number] == [
            killed.user_attrs["pbt"]]
    for folder in (tmp_path / "killed" / "trials").iterdir():  # whole runs only: the members' last segments
        assert (folder / "metrics.json").is_file(), sorted(p.name for p in folder.iterdir())
