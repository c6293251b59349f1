"""Searches: the space and its errors, every sampler and pruner, several objectives, storage, resume."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from dltune.config import load_config
from dltune.errors import ConfigError
from dltune.tune import PRUNERS, SAMPLERS, create_study, load_tune, tune

from conftest import ROOT

POSTGRES = os.environ.get("DLTUNE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
SPACE = {"optim.lr": {"low": 1e-4, "high": 3e-1, "log": True}, "schedule.name": ["constant", "cosine"]}


def experiment(**search) -> dict:
    return {"data": {"name": "digits", "limit": 500}, "model": {"hidden": [16]}, "train": {"epochs": 3},
            "search": {"trials": 4, "space": SPACE, **search}}


@pytest.mark.parametrize(("space", "message"), [
    ({"optim.lrr": {"low": 1e-4, "high": 1e-1}}, "search.space.optim.lrr: invalid experiment:\n  optim.lrr: unknown key"),
    ({"optim.lr": {"low": 1e-1, "high": 1e-4}}, "search.space.optim.lr: low > high (0.1 > 0.0001)"),
    ({"optim.lr": {"low": 1e-3, "high": 1e-3}}, "search.space.optim.lr: empty range"),
    ({"optim.lr": {"low": 0.0, "high": 1e-1, "log": True}}, "search.space.optim.lr: log needs low > 0"),
    ({"schedule.name": []}, "search.space.schedule.name: empty list of choices"),
    ({"schedule.name": ["constant", "exponential"],
      "schedule.gamma": {"low": 0.5, "high": 0.9, "when": {"schedule.name": "expo"}}},
     "search.space.schedule.gamma: when: schedule.name has no choice 'expo'"),
    ({"schedule.name": ["constant", "cosin"]}, "search.space.schedule.name: schedule.name: unknown schedule 'cosin'"),
    ({}, "search.space: empty"),
])
def test_bad_spaces_are_rejected_before_any_trial(space: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        tune(load_config(experiment(space=space)), out_dir=tmp_path / "out")
    assert message in str(e.value)
    assert not (tmp_path / "out").exists()


def test_bad_search_settings(tmp_path: Path) -> None:
    for search, message in [({"sampler": "bayes"}, "search.sampler: unknown sampler 'bayes'"),
                            ({"objectives": ["val.acc"]}, "search.objectives: unknown objective 'val.acc'"),
                            ({"objectives": ["latency"]}, "search.pruner: the first objective, latency")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            tune(load_config(experiment(**search)), out_dir=tmp_path / "out")


def test_unreachable_storage_masks_the_password(tmp_path: Path) -> None:
    url = "postgresql://dltune:hunter2@127.0.0.1:1/none"
    with pytest.raises(ConfigError) as e:
        tune(load_config(experiment()), out_dir=tmp_path, storage=url)
    assert "postgresql://dltune:***@127.0.0.1:1/none" in str(e.value) and "hunter2" not in str(e.value)


@pytest.mark.parametrize("sampler", SAMPLERS.names())
def test_every_sampler(sampler: str, tmp_path: Path) -> None:
    space = SPACE if sampler != "grid" else {"optim.lr": [1e-3, 1e-2], "schedule.name": ["constant", "cosine"]}
    data = tune(load_config(experiment(sampler=sampler, pruner="none", space=space)), out_dir=tmp_path)
    complete = [t for t in data.trials if t.state == "COMPLETE"]
    assert len(complete) == 4 and len({json.dumps(t.params, sort_keys=True) for t in complete}) >= 2
    assert data.sampler == sampler and (tmp_path / "best.toml").exists()


@pytest.mark.parametrize("pruner", PRUNERS.names())
def test_every_pruner(pruner: str, tmp_path: Path) -> None:
    space = {"optim.lr": {"low": 1e-6, "high": 1.0, "log": True}}  # many hopeless lrs to stop early
    data = tune(load_config(experiment(pruner=pruner, sampler="random", trials=10, startup_trials=2, space=space)),
                out_dir=tmp_path)
    finished = [t for t in data.trials if t.state in ("COMPLETE", "PRUNED")]
    assert len(finished) == 10
    for t in data.trials:
        if t.state == "PRUNED":
            assert t.pruned_at is not None and len(t.epochs) == t.pruned_at <= 3
    if pruner in ("asha", "hyperband", "median"):
        assert any(t.state == "PRUNED" for t in data.trials)
    if pruner == "none":
        assert all(t.state == "COMPLETE" for t in data.trials)


def test_several_objectives_give_a_pareto_front(tmp_path: Path) -> None:
    space = {"optim.lr": {"low": 1e-3, "high": 3e-2, "log": True}, "model.hidden": {"depth": [1, 2], "width": [4, 64]}}
    data = tune(load_config(experiment(objectives=["val.accuracy", "parameters", "latency"], sampler="nsga2",
                                       trials=8, space=space)), out_dir=tmp_path)
    assert data.directions == ["maximize", "minimize", "minimize"]
    front = [t for t in data.trials if t.number in data.best]
    assert front and all(len(t.values) == 3 for t in front)
    for a in front:  # no trial of the front is dominated by another complete trial
        for b in (t for t in data.trials if t.state == "COMPLETE"):
            assert not (b.values[0] >= a.values[0] and b.values[1] <= a.values[1] and b.values[2] <= a.values[2]
                        and b.values != a.values)
    assert optuna.load_study(study_name="search:pruning", storage=f"sqlite:///{tmp_path / 'study.db'}")


def test_resume_by_name_and_best_toml_reproduces(tmp_path: Path) -> None:
    config = load_config(experiment(pruner="none", trials=3))
    first = tune(config, out_dir=tmp_path)
    kept = {t.number: t.values for t in first.trials}
    second = tune(config, out_dir=tmp_path, trials=5)
    assert [t.number for t in second.trials] == [0, 1, 2, 3, 4]
    assert {t.number: t.values for t in second.trials if t.number in kept} == kept
    with pytest.raises(ConfigError, match="holds another experiment or search"):
        tune(load_config(experiment(pruner="none", sampler="random")), out_dir=tmp_path)
    best = next(t for t in second.trials if t.number == second.best[0])
    r = subprocess.run([sys.executable, "-m", "dltune", "train", str(tmp_path / "best.toml"), "--out",
                        str(tmp_path / "again"), "--json"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["test"] == best.test
    assert (tmp_path / "best" / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("jobs", "storage"), [(1, "sqlite:///{out}/study.db"), (2, "{out}/journal.log")])
def test_optuna_dashboard_reads_the_study(tmp_path: Path, jobs: int, storage: str) -> None:
    data = tune(load_config(experiment(trials=3)), out_dir=tmp_path, jobs=jobs)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dashboard = subprocess.Popen([str(Path(sys.executable).parent / "optuna-dashboard"), storage.format(out=tmp_path),
                                  "--port", str(port), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    summaries = json.load(r)["study_summaries"]
                break
            except OSError:
                assert dashboard.poll() is None and time.time() < deadline, dashboard.stderr.read() if dashboard.stderr else ""
                time.sleep(0.3)
        assert [s["study_name"] for s in summaries] == ["search"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summaries[0]['study_id']}?after=0",
                                    timeout=10) as r:
            study = json.load(r)
        assert sorted(t["number"] for t in study["trials"]) == [t.number for t in data.trials]
        assert [t["number"] for t in study["best_trials"]] == data.best
        assert study["best_trials"][0]["values"] == data.trials[data.best[0]].values
    finally:
        dashboard.terminate()
        dashboard.wait()


def test_a_trial_that_raises_is_recorded_and_the_study_goes_on(tmp_path: Path) -> None:
    # a CNN cannot read a table: those trials fail with that error; the MLP trials complete
    config = {"data": {"name": "breast-cancer"}, "model": {"hidden": [8]}, "train": {"epochs": 2},
              "search": {"trials": 4, "sampler": "random", "pruner": "none",
                         "space": {"model.name": ["mlp", "cnn"], "optim.lr": {"low": 1e-3, "high": 1e-2}}}}
    data = tune(load_config(config), out_dir=tmp_path)
    failed = [t for t in data.trials if t.state == "FAIL"]
    assert failed and all("cnn needs image data" in t.error for t in failed)
    assert sum(t.state == "COMPLETE" for t in data.trials) == 4


def test_jobs_share_a_journal_file(tmp_path: Path) -> None:
    data = tune(load_config(experiment(pruner="none", trials=4)), out_dir=tmp_path, jobs=2)
    assert (tmp_path / "journal.log").exists() and not (tmp_path / "study.db").exists()
    assert sorted(t.number for t in data.trials if t.state == "COMPLETE") == [0, 1, 2, 3]


def _worker(name: str, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dltune", "worker", "--storage", POSTGRES, "--study", name,
                             "--out", str(out), "--threads", "1", *extra], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def pg_study(tmp_path: Path):
    name = f"dltune-test-{uuid.uuid4().hex[:8]}"
    yield name
    for study in (name, f"{name}:pruning"):
        try:
            optuna.delete_study(study_name=study, storage=POSTGRES)
        except KeyError:
            pass


@pytest.mark.slow
def test_two_workers_on_postgresql_share_the_trials(tmp_path: Path, pg_study: str) -> None:
    create_study(load_config(experiment(trials=6, pruner="none")), storage=POSTGRES, study=pg_study)
    workers = [_worker(pg_study, tmp_path / f"w{i}") for i in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    trials = optuna.load_study(study_name=pg_study, storage=POSTGRES).get_trials()
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # none run twice
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    # none lost, none extra: a trial created by both workers at the same moment for the last place waits
    # in the queue, never run
    assert len(complete) == 6
    assert all(t.state == TrialState.WAITING and not t.params for t in trials if t not in complete)
    ran = [int(re.search(r"(\d+) trials run here", out).group(1)) for out, _ in outputs]
    assert sum(ran) == 6 and all(n >= 1 for n in ran)


@pytest.mark.slow
def test_two_workers_on_postgresql_share_the_asha_rungs(tmp_path: Path, pg_study: str) -> None:
    # 12 trials, one rung at epoch 1 with η = 3: 4 go on (5 when both workers fill the last slot at once);
    # a trial waiting at the rung keeps beating, and neither worker prunes its waiting trials while the
    # other's are still on their way to the rung
    create_study(load_config(experiment(trials=12, pruner="asha", reduction_factor=3, sampler="random")),
                 storage=POSTGRES, study=pg_study)
    workers = [_worker(pg_study, tmp_path / f"w{i}") for i in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    trials = optuna.load_study(study_name=pg_study, storage=POSTGRES).get_trials()
    run = [t for t in trials if t.state != TrialState.WAITING]
    complete = [t for t in run if t.state == TrialState.COMPLETE]
    assert len(run) == 12 and len(complete) in (4, 5)
    assert all(t.state == TrialState.PRUNED and list(t.intermediate_values) == [1] for t in run if t not in complete)


@pytest.mark.slow
def test_a_killed_worker_leaves_no_trial_running(tmp_path: Path, pg_study: str) -> None:
    slow = {**experiment(trials=3, pruner="none"), "data": {"name": "mnist-5k", "limit": 3000},
            "model": {"hidden": [256]}, "train": {"epochs": 8}}
    create_study(load_config(slow), storage=POSTGRES, study=pg_study)
    doomed = _worker(pg_study, tmp_path / "a")
    deadline = time.time() + 60
    while time.time() < deadline:
        running = optuna.load_study(study_name=pg_study, storage=POSTGRES).get_trials(states=(TrialState.RUNNING,))
        if running:
            break
        time.sleep(0.2)
    assert running, "the first worker never started a trial"
    time.sleep(0.5)
    doomed.kill()  # SIGKILL, mid-trial
    doomed.wait()
    rescue = _worker(pg_study, tmp_path / "b")
    out, err = rescue.communicate(timeout=300)
    assert rescue.returncode == 0, err
    trials = optuna.load_study(study_name=pg_study, storage=POSTGRES).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    killed = next(t for t in trials if t.number == running[0].number)
    assert killed.state == TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retried and retried[0].state == TrialState.COMPLETE and retried[0].params == killed.params
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3
    data = load_tune(POSTGRES, pg_study)
    assert len(data.best) == 1


@pytest.mark.slow
def test_ctrl_c_marks_the_running_trial_and_the_next_tune_resumes(tmp_path: Path) -> None:
    import signal

    slow = {**experiment(trials=4, pruner="none"), "data": {"name": "mnist-5k", "limit": 3000},
            "model": {"hidden": [256]}, "train": {"epochs": 6}}
    import tomli_w

    config = tmp_path / "exp.toml"
    config.write_text(tomli_w.dumps(slow))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "dltune", "tune", str(config), "--out", str(out)]
    # as from a terminal: a process started in the background inherits SIGINT ignored; undo that
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    storage = f"sqlite:///{out / 'study.db'}"
    deadline, running = time.time() + 60, []
    while time.time() < deadline and not running:
        time.sleep(0.2)
        try:
            running = optuna.load_study(study_name="exp", storage=storage).get_trials(states=(TrialState.RUNNING,))
        except Exception:  # not created yet
            continue
    assert running
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "dltune tune: interrupted"
    study = optuna.load_study(study_name="exp", storage=storage)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert study.get_trials()[running[0].number].state == TrialState.FAIL
    again = subprocess.run(command + ["--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["trials"]["complete"] == 4 and summary["trials"]["running"] == 0
    assert summary["best"] and Path(summary["best_config"]).exists() and Path(summary["report"]).exists()


@pytest.mark.slow
def test_timeout_and_jobs_from_the_cli_end_with_no_trial_left_running(tmp_path: Path) -> None:
    import tomli_w

    config = tmp_path / "exp.toml"
    config.write_text(tomli_w.dumps(experiment(trials=10_000, pruner="asha", reduction_factor=3)))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "dltune", "tune", str(config), "--out", str(out), "--timeout", "5",
                        "--jobs", "2", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)["trials"]
    assert 0 < summary["complete"] and summary["complete"] + summary["pruned"] < 10_000 and summary["running"] == 0
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "journal.log")))
    trials = optuna.load_study(study_name="exp", storage=storage).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]  # paused at a rung when time ran out: pruned
    assert {len(t.intermediate_values) for t in trials if t.state == TrialState.PRUNED} <= {1}


def test_a_trial_created_for_a_place_already_taken_goes_back_to_the_queue() -> None:
    from dltune.tune import _claim

    study = optuna.create_study()
    first = _claim(study, target=1)  # room for one: it runs
    assert first is not None and first.number == 0
    assert _claim(study, target=1) is None  # another worker's, at the same moment: queued, never run
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING, TrialState.WAITING]
    study.tell(first, 0.5)
    assert _claim(study, target=2).number == 1  # a larger search takes the queued trial first
