"""Searches: the space and its errors, every sampler and pruner, several objectives, storage, resume."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from dltune.experiment.config import load_config
from dltune.errors import ConfigError
from dltune.study.tune import PRUNERS, SAMPLERS, create_study, load_tune, tune

from conftest import POSTGRES, ROOT, run_main, server_trials, trials_in

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
    if pruner == "pbt":  # no trials to count: search.population's 8 whole runs, in generations (test_pbt_search.py)
        assert sum(t.state == "COMPLETE" for t in finished) == 8 and all(t.pbt is not None for t in data.trials)
        return
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


def test_resume_by_name_and_best_toml_reproduces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(experiment(pruner="none", trials=3))
    first = tune(config, out_dir=tmp_path)
    kept = {t.number: t.values for t in first.trials}
    second = tune(config, out_dir=tmp_path, trials=5)
    assert [t.number for t in second.trials] == [0, 1, 2, 3, 4]
    assert {t.number: t.values for t in second.trials if t.number in kept} == kept
    with pytest.raises(ConfigError, match="holds another experiment or search"):
        tune(load_config(experiment(pruner="none", sampler="random")), out_dir=tmp_path)
    best = next(t for t in second.trials if t.number == second.best[0])
    r = run_main(capsys, "train", str(tmp_path / "best.toml"), "--out", str(tmp_path / "again"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["test"] == best.test
    assert (tmp_path / "best" / "model.safetensors").exists()


@pytest.fixture(scope="module")
def sqlite_search(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A finished search in study.db, only read by the tests that take it: its folder and what tune returned."""
    out = tmp_path_factory.mktemp("sqlite-search")
    return out, tune(load_config(experiment(pruner="none", trials=3)), out_dir=out)


@pytest.fixture(scope="module")
def journal_search(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A finished search of two jobs sharing journal.log, only read by the tests that take it."""
    out = tmp_path_factory.mktemp("journal-search")
    return out, tune(load_config(experiment(pruner="none", trials=4)), out_dir=out, jobs=2)


@pytest.mark.slow
@pytest.mark.parametrize(("search", "storage"), [("sqlite_search", "sqlite:///{out}/study.db"),
                                                 ("journal_search", "{out}/journal.log")])
def test_optuna_dashboard_reads_the_study(request: pytest.FixtureRequest, search: str, storage: str) -> None:
    tmp_path, data = request.getfixturevalue(search)
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


def test_jobs_share_a_journal_file(journal_search: tuple[Path, object]) -> None:
    tmp_path, data = journal_search
    assert (tmp_path / "journal.log").exists() and not (tmp_path / "study.db").exists()
    assert sorted(t.number for t in data.trials if t.state == "COMPLETE") == [0, 1, 2, 3]


def _worker(name: str, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dltune", "worker", "--storage", POSTGRES, "--study", name,
                             "--out", str(out), "--threads", "1", *extra], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_workers_on_postgresql_share_the_trials(tmp_path: Path, pg_study: str) -> None:
    # trials of about a second and a half each: one worker alone would need several seconds for all six, far
    # more than the two workers' start-up times differ by, so both take a share (with trials of 0.1 s, a worker
    # that started a second late on a busy CI machine found the search already done)
    slow = {**experiment(trials=6, pruner="none"), "data": {"name": "mnist-5k", "limit": 3000},
            "model": {"hidden": [256]}, "train": {"epochs": 30}}
    create_study(load_config(slow), storage=POSTGRES, study=pg_study)
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
    ran = [int(re.search(r"(\d+) trials? run here", out).group(1)) for out, _ in outputs]
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
            "model": {"hidden": [256]}, "train": {"epochs": 30}}
    create_study(load_config(slow), storage=POSTGRES, study=pg_study)
    doomed = _worker(pg_study, tmp_path / "a")
    deadline = time.time() + 60
    while time.time() < deadline:  # a trial that has reported an epoch, and has 29 to go: surely mid-trial
        running = [t for t in server_trials(pg_study, states=(TrialState.RUNNING,)) if t.intermediate_values]
        if running:
            break
        time.sleep(0.1)
    assert running, "the first worker never started a trial"
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
def test_ctrl_c_marks_the_running_trial_and_the_next_tune_resumes(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
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
    deadline, running = time.time() + 120, []
    while time.time() < deadline and not running and proc.poll() is None:
        time.sleep(0.2)
        running = trials_in(out / "study.db", "RUNNING")
    assert running, proc.stderr.read() if proc.poll() is not None else "no trial started in 120 s"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "dltune tune: interrupted"
    assert "recorded as interrupted, and their configurations are queued again: the same command goes on" in err
    study = optuna.load_study(study_name="exp", storage=storage)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    cut = study.get_trials()[running[0]]
    assert cut.state == TrialState.FAIL and cut.user_attrs["interrupted"].startswith("the search was stopped (Ctrl-C)")
    again = run_main(capsys, *command[3:], "--json")  # the CLI's main, in this process: the same command
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["trials"]["complete"] == 4 and summary["trials"]["running"] == 0
    assert summary["trials"]["interrupted"] == 1 and summary["trials"]["fail"] == 0
    listed = {t["number"]: t for t in summary["trial_list"]}
    assert listed[running[0]]["state"] == "interrupted" and "queued again as trial" in listed[running[0]]["reason"]
    assert sorted(t["number"] for t in summary["trial_list"]) == [t.number for t in study.get_trials()]
    requeued = next(t for t in summary["trial_list"] if t["params"] == listed[running[0]]["params"]
                    and t["number"] != running[0])
    assert requeued["state"] == "complete" and requeued["epochs"] == 6 and requeued["reason"] is None
    assert summary["best"] and Path(summary["best_config"]).exists() and Path(summary["report"]).exists()


@pytest.mark.slow
def test_timeout_and_jobs_from_the_cli_end_with_no_trial_left_running(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import tomli_w

    config = tmp_path / "exp.toml"
    config.write_text(tomli_w.dumps(experiment(trials=10_000, pruner="asha", reduction_factor=3)))
    out = tmp_path / "out"
    r = run_main(capsys, "tune", str(config), "--out", str(out), "--timeout", "3", "--jobs", "2", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)["trials"]
    assert 0 < summary["complete"] and summary["complete"] + summary["pruned"] < 10_000 and summary["running"] == 0
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "journal.log")))
    trials = optuna.load_study(study_name="exp", storage=storage).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]  # paused at a rung when time ran out: pruned
    assert {len(t.intermediate_values) for t in trials if t.state == TrialState.PRUNED} <= {1}


def test_a_trial_created_for_a_place_already_taken_goes_back_to_the_queue() -> None:
    from dltune.study.sharing import claim_trial as _claim

    study = optuna.create_study()
    first = _claim(study, target=1)  # room for one: it runs
    assert first is not None and first.number == 0
    assert _claim(study, target=1) is None  # another worker's, at the same moment: queued, never run
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING, TrialState.WAITING]
    study.tell(first, 0.5)
    assert _claim(study, target=2).number == 1  # a larger search takes the queued trial first


def test_a_queued_trial_taken_after_a_new_one_yields_to_it() -> None:
    # seen in CI as 11 finished trials for a target of 10: a dead worker's trial, queued again with a low
    # number, was taken by one worker just after another had taken the last place with a new, higher number
    from dltune.study.sharing import claim_trial as _claim

    study = optuna.create_study()
    study.tell(study.ask(), 0.5)
    study.enqueue_trial({})  # trial 1, WAITING: a retry
    storage = study._storage
    newer = storage.create_new_trial(study._study_id)  # trial 2: another worker took the last place first
    assert storage.get_trial(newer).state == TrialState.RUNNING
    assert _claim(study, target=2) is None  # trial 1, taken later: back to the queue, though its number is lower
    assert storage.get_trial(newer).state == TrialState.RUNNING
    assert [t.state for t in study.get_trials()][1] == TrialState.WAITING


@pytest.mark.slow
def test_a_timeout_before_any_trial_completes_says_why_and_keeps_the_best_pruned(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import tomli_w

    # rungs at epochs 1, 4 and 16 of 30 with η = 4: a trial completes only after some 64 have started,
    # far more than 2 seconds allow
    config = tmp_path / "exp.toml"
    slow = {**experiment(trials=500, pruner="asha"), "data": {"name": "mnist-5k", "limit": 2000},
            "train": {"epochs": 30}}
    config.write_text(tomli_w.dumps(slow))
    out = tmp_path / "out"
    r = run_main(capsys, "tune", str(config), "--out", str(out), "--timeout", "2")
    assert r.returncode == 1, r.stderr  # the search ran, and has no result to use
    assert re.fullmatch(r"dltune tune: no trial completed \(\d+ pruned of \d+\); see .*report\.html",
                        r.stderr.splitlines()[-1]), r.stderr
    from test_exit_codes import assert_quoted

    assert_quoted(1, "tune", r.stderr.splitlines()[-1], DIR=out)  # as README's Exit codes table quotes it
    assert "No trial completed:" in r.stdout and "ASHA lets 1 in 4 trials go on from each rung (epochs 1, 4, 16 of " \
        "30), so a trial completes once about 64 have started; in its --timeout of 2 s it started" in r.stdout
    said = " ".join(r.stdout.split())  # a long path makes the console wrap the line
    assert "longer --timeout" in said and "NOT trained to the end" in said
    assert not (out / "best.toml").exists()
    data = load_tune(f"sqlite:///{out / 'study.db'}", "exp")
    pruned = [t for t in data.trials if t.state == "PRUNED"]
    furthest = max(len(t.epochs) for t in pruned)
    best = next(t for t in pruned if t.number == data.best_pruned)
    assert len(best.epochs) == furthest
    assert all(t.epochs[-1]["val"]["accuracy"] <= best.epochs[-1]["val"]["accuracy"]
               for t in pruned if len(t.epochs) == furthest)
    text = (out / "best-pruned.toml").read_text()
    assert text.startswith(f"# NOT TRAINED TO THE END: no trial of the search 'exp' completed. This is trial "
                           f"{best.number},\n# pruned after epoch {furthest} of 30")
    resolved = tomllib.loads(text)  # the comments aside, the trial's own experiment: dltune train runs it
    assert resolved["optim"]["lr"] == best.params["optim.lr"] and resolved["train"]["epochs"] == 30
    again = run_main(capsys, "tune", str(config), "--out", str(out), "--timeout", "0.5", "--json")
    assert again.returncode == 1 and again.stderr.splitlines()[-1].startswith("dltune tune: no trial completed")
    summary = json.loads(again.stdout)  # the JSON on stdout all the same
    assert summary["best_config"] is None and summary["best_pruned_config"] == str(out / "best-pruned.toml")
    assert summary["note"].startswith("No trial completed:")


def test_best_pruned_toml_goes_once_a_trial_completes(tmp_path: Path) -> None:
    (tmp_path / "best-pruned.toml").write_text("# NOT TRAINED TO THE END\n")  # from an earlier, shorter run
    data = tune(load_config(experiment(pruner="none", trials=2)), out_dir=tmp_path)
    assert data.best and data.best_pruned is None
    assert (tmp_path / "best.toml").exists() and not (tmp_path / "best-pruned.toml").exists()


def test_several_objectives_are_named_by_metric_and_the_front_is_marked(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import tomli_w

    space = {"optim.lr": {"low": 1e-3, "high": 3e-2, "log": True}, "model.hidden": {"depth": [1, 2], "width": [4, 64]}}
    config = tmp_path / "exp.toml"
    config.write_text(tomli_w.dumps(experiment(objectives=["val.accuracy", "parameters"], sampler="nsga2",
                                               pruner="none", trials=8, top_k=8, space=space)))
    r = run_main(capsys, "tune", str(config), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    header = next(line for line in r.stdout.splitlines() if "trial" in line and "settings" in line)
    assert header.count("parameters") == 1 and "parameters (count) ↓" in header
    assert "val.accuracy (%) ↑" in header and "front" in header
    assert "* marks the Pareto front" in r.stdout
    data = load_tune(f"sqlite:///{tmp_path / 'out' / 'study.db'}", "exp")
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in r.stdout.splitlines() if line.startswith("│")]
    assert len(cells) == 8  # top_k = 8: every trial, the front among them
    assert {int(c[0]) for c in cells if c[1] == "*"} == set(data.best) and {c[1] for c in cells} == {"*", ""}


def test_a_search_and_an_ablation_leave_logging_and_warning_filters_as_they_were(tmp_path: Path) -> None:
    import warnings

    from dltune.study.ablate import ablate

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            filters = list(warnings.filters)
            tune(load_config(experiment(trials=2)), out_dir=tmp_path / "search")
            ablate(load_config({**experiment(), "ablation": {"seeds": 1, "variants": {"wide": {"model.hidden": [32]}}},
                                "search": {}}), out_dir=tmp_path / "ablation")
            assert list(warnings.filters) == filters  # the caller's filters, none added
        assert optuna.logging.get_verbosity() == optuna.logging.INFO  # the caller's log level
        noise = [w for w in caught if issubclass(w.category, optuna.exceptions.ExperimentalWarning)
                 or "Heartbeat of storage" in str(w.message)]
        assert not noise, [str(w.message) for w in noise]  # silenced where dltune chose them, and only there
    finally:
        optuna.logging.set_verbosity(level)


def test_ablations_and_searches_store_a_run_alike(sqlite_search: tuple[Path, object], tmp_path: Path) -> None:
    from dltune.study.records import RUN_ATTRS
    from dltune.study.ablate import ablate

    search = sqlite_search[0]
    ablate(load_config({**experiment(), "ablation": {"seeds": 1, "variants": {"wide": {"model.hidden": [32]}}},
                        "search": {}}), out_dir=tmp_path / "ablation")
    searched = optuna.load_study(study_name="search", storage=f"sqlite:///{search / 'study.db'}")
    ablated = optuna.load_study(study_name="ablation", storage=f"sqlite:///{tmp_path / 'ablation' / 'study.db'}")
    for trial in searched.get_trials() + ablated.get_trials():
        attrs = trial.user_attrs
        assert set(RUN_ATTRS) <= set(attrs), sorted(set(RUN_ATTRS) - set(attrs))
        assert attrs["samples_per_second"] > 0 and "[model]" in attrs["config_toml"] and attrs["environment"]
    data = load_tune(f"sqlite:///{search / 'study.db'}", "search")
    assert all(t.status == "completed" and t.samples_per_second > 0 for t in data.trials)


def test_the_search_does_not_depend_on_the_order_of_the_space_in_the_file(tmp_path: Path) -> None:
    # a file read by `dltune tune`, and the same experiment as stored in the study (TOML writes tables after
    # plain values) and read back by a worker, must sample one search
    from dltune.study.space import parse_space

    base = load_config(experiment())
    space = {"optim.lr": {"low": 1e-4, "high": 3e-1, "log": True}, "schedule.name": ["constant", "cosine"],
             "schedule.gamma": {"low": 0.5, "high": 0.9, "when": {"schedule.name": "cosine"}}}
    reordered = {k: space[k] for k in ("schedule.gamma", "schedule.name", "optim.lr")}
    orders = [[e.path for e in parse_space(s, base).entries] for s in (space, reordered)]
    assert orders[0] == orders[1] == ["optim.lr", "schedule.name", "schedule.gamma"]
    first = tune(load_config(experiment(pruner="none", trials=3, space=space)), out_dir=tmp_path / "a")
    second = tune(load_config(experiment(pruner="none", trials=3, space=reordered)), out_dir=tmp_path / "b")
    assert [t.params for t in first.trials] == [t.params for t in second.trials]


def test_a_trial_whose_worker_died_before_its_first_heartbeat_goes_stale_too(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # seen in CI: a worker SIGKILLed between taking a trial and its first beat left a RUNNING trial that
    # Optuna's stale check skips (no heartbeat at all), and two workers waited for it until their timeout
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    from dltune.study import sharing

    storage = RDBStorage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat_interval=1, grace_period=1,
                         heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback())
    study = optuna.create_study(storage=storage, study_name="s")
    orphan = study.ask()  # taken, and its worker killed before any beat
    optuna.storages.fail_stale_trials(study)
    assert study.get_trials()[0].state == TrialState.RUNNING  # Optuna alone would wait for it forever
    assert sharing.adopt_orphans(study, study.get_trials()) == []  # too young: a live worker may be about to beat
    monkeypatch.setattr(sharing, "ORPHAN_SECONDS", 0.0)
    assert sharing.adopt_orphans(study, study.get_trials()) == [orphan.number]
    assert sharing.adopt_orphans(study, study.get_trials()) == []  # it beats once, and only once
    time.sleep(2.5)
    optuna.storages.fail_stale_trials(study)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.WAITING]  # failed, and its parameters queued again


def test_a_search_opens_while_other_studies_on_the_server_come_and_go(pg_study: str) -> None:
    # a shared server: another user's studies are created and deleted while this search is opened. Listing the
    # studies read every trial of each (Optuna's get_all_study_summaries), and a study deleted meanwhile failed the
    # open with "Record does not exist." (a rescue worker in CI, while another test file dropped its study)
    create_study(load_config(experiment()), storage=POSTGRES, study=pg_study)
    stop, churned = threading.Event(), []

    def churn() -> None:  # on connections of its own, as another process's would be
        storage = optuna.storages.RDBStorage(POSTGRES)
        while not stop.is_set():
            name = f"{pg_study}-other-{len(churned)}"
            other = optuna.create_study(storage=storage, study_name=name)
            for _ in range(5):
                other.tell(other.ask(), 1.0)
            optuna.delete_study(study_name=name, storage=storage)
            churned.append(name)
        storage.engine.dispose()

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        for _ in range(40):
            assert load_tune(POSTGRES, pg_study).study == pg_study
    finally:
        stop.set()
        thread.join()
    assert len(churned) >= 5  # the other studies did come and go meanwhile


def _trials(out: Path) -> dict[str, list[tuple[int, str, dict, list | None]]]:
    """Each study in out/study.db: its trials' numbers, states, params and values, read from the storage."""
    storage = f"sqlite:///{out / 'study.db'}"
    return {name: [(t.number, t.state.name, t.params, t.values)
                   for t in optuna.load_study(study_name=name, storage=storage).get_trials()]
            for name in optuna.get_all_study_names(storage)}


def test_the_cli_and_python_continue_one_study_in_one_folder(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import tomli_w

    config = tmp_path / "exp.toml"
    config.write_text(tomli_w.dumps(experiment(pruner="none", trials=2)))
    out = tmp_path / "out"
    r = run_main(capsys, "tune", str(config), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert list(_trials(out)) == ["exp"]  # the CLI names a new study after the file
    data = tune(load_config(config), out_dir=out, trials=3)  # an experiment from code: its default is "search"
    assert data.study == "exp" and list(_trials(out)) == ["exp"] and len(_trials(out)["exp"]) == 3
    assert tune(str(config), out_dir=out, trials=4).study == "exp"  # from the file's path: its stem, as the CLI
    r = run_main(capsys, "tune", str(config), "--out", str(out), "--trials", "5", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["study"] == "exp"
    assert list(_trials(out)) == ["exp"] and [t[0] for t in _trials(out)["exp"]] == [0, 1, 2, 3, 4]
    # the other way round: Python starts the search ("search"), the CLI goes on with it
    other = tmp_path / "other"
    tune(load_config(config), out_dir=other, trials=1)
    r = run_main(capsys, "tune", str(config), "--out", str(other), "--json")
    assert r.returncode == 0 and list(_trials(other)) == ["search"] and len(_trials(other)["search"]) == 2
    # a name given is the name used: a second study beside the first
    tune(load_config(config), out_dir=other, trials=1, study="second")
    assert sorted(_trials(other)) == ["search", "second"]
    with pytest.raises(ConfigError, match=r"holds this search under several names \(search, second\); choose one "
                                          "with --study"):
        tune(load_config(config), out_dir=other, experiment="third")


def test_more_adds_finished_trials_and_trials_is_the_total(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import tomli_w

    config = tmp_path / "exp.toml"
    config.write_text(tomli_w.dumps(experiment(pruner="none", trials=4)))
    out = tmp_path / "out"
    assert run_main(capsys, "tune", str(config), "--out", str(out)).returncode == 0
    first = _trials(out)["exp"]
    assert [t[0] for t in first] == [0, 1, 2, 3]
    again = run_main(capsys, "tune", str(config), "--out", str(out), "--trials", "4")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == "the study has 4 of 4 trials; --more N adds N"
    assert not [line for line in again.stdout.splitlines() if line.startswith("trial ")]  # none ran
    assert _trials(out)["exp"] == first
    more = run_main(capsys, "tune", str(config), "--out", str(out), "--more", "2", "--json")
    assert more.returncode == 0, more.stderr
    after = _trials(out)["exp"]
    assert [t[0] for t in after] == [0, 1, 2, 3, 4, 5] and after[:4] == first
    assert json.loads(more.stdout)["trials"]["complete"] == 6
    data = tune(load_config(config), out_dir=out, more=1)  # Python: the same, with more=
    assert [t.number for t in data.trials] == [0, 1, 2, 3, 4, 5, 6]
    assert [t[:4] for t in _trials(out)["exp"][:6]] == after


def test_more_is_refused_without_a_study_and_with_trials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import tomli_w

    config = tmp_path / "exp.toml"
    config.write_text(tomli_w.dumps(experiment(pruner="none", trials=1)))
    empty = tmp_path / "empty"
    r = run_main(capsys, "tune", str(config), "--out", str(empty), "--more", "2")
    assert r.returncode == 2 and r.stderr.strip() == (f"dltune tune: error: --more 2: {empty} holds no search to add "
                                                      "trials to (no study.db); start one without --more")
    assert not empty.exists()  # nothing written
    r = run_main(capsys, "tune", str(config), "--out", str(empty), "--more", "2", "--trials", "3")
    assert r.returncode == 2 and "argument --trials: not allowed with argument --more" in r.stderr
    with pytest.raises(ConfigError, match=r"^--trials 3 and --more 2: give one; --trials is the study's total"):
        tune(load_config(config), out_dir=empty, trials=3, more=2)
    with pytest.raises(ConfigError, match=r"^--more: must be at least 1, got 0"):
        tune(load_config(config), out_dir=empty, more=0)
    ablation = tmp_path / "ablation"  # a storage that holds a study, but no search
    ablation.mkdir()
    optuna.create_study(study_name="ablation", storage=f"sqlite:///{ablation / 'study.db'}")
    with pytest.raises(ConfigError, match=r"^--more 1: no search to add trials to; .* holds no study named 'search'; "
                                          r"studies: ablation"):
        tune(load_config(config), out_dir=ablation, more=1)
