"""Searches on Ray Tune (`dltune tune --backend ray`): the same [search] run by Ray's OptunaSearch and schedulers,
recorded in the same Optuna study, best.toml, report and table as the optuna backend; and its bad input."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import tomli_w

from dltune.experiment.config import load_config, override
from dltune.errors import ConfigError
from dltune.study.asha import rungs
from dltune.study.engines import PRUNERS
from dltune.study.tune import load_tune, tune

from conftest import ROOT, in_ci, run_cli, run_main

SPACE = {"optim.lr": {"low": 1e-3, "high": 3e-1, "log": True}, "schedule.name": ["constant", "cosine"],
         "schedule.warmup_epochs": {"low": 0, "high": 1, "when": {"schedule.name": "cosine"}}}


def experiment(**search) -> dict:
    return {"data": {"name": "digits", "limit": 500}, "model": {"hidden": [16]}, "train": {"epochs": 3},
            "search": {"trials": 6, "reduction_factor": 2, "top_k": 6, "space": SPACE, **search}}


@pytest.fixture(scope="module")
def ray_address() -> str:
    """One local Ray instance for the module (2 CPUs, no dashboard, on the loopback interface only), shut down
    after it; its address, for `--address`. Ray 2.60 gives a new local instance token authentication: the token
    (~/.ray/auth_token, made on first use) and RAY_AUTH_MODE=token, which ray.init sets here, let the CLI's
    processes connect."""
    kept = {k: os.environ.get(k) for k in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE")}
    # Ray on Linux takes the machine's address for its node; this makes it (and the processes it starts) bind and
    # use 127.0.0.1. Read when Ray is first imported: set before.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        import ray
    except ImportError:
        message = "Ray Tune is not installed (pip install 'dltune[ray]'; make test installs it)"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # in case another test imported Ray first
    context = ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()
        for key, value in kept.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.mark.slow
def test_a_search_on_ray_is_stored_reported_and_reproduced(ray_address: str, tmp_path: Path) -> None:
    assert ray_address.startswith("127.0.0.1:")
    config = tmp_path / "exp.toml"
    config.write_text(tomli_w.dumps(experiment()))
    out = tmp_path / "out"
    started = time.monotonic()
    r = run_cli("tune", str(config), "--backend", "ray", "--address", ray_address, "--out", str(out))
    seconds = time.monotonic() - started
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    # the Optuna study in the output folder holds every trial, as the optuna backend writes it
    study = optuna.load_study(study_name="exp", storage=f"sqlite:///{out / 'study.db'}")
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(6))
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert complete and all(len(t.intermediate_values) == 3 for t in complete)
    for t in trials:
        assert t.user_attrs["overrides"]["optim.lr"] == t.params["optim.lr"]
        cosine = t.params["schedule.name"] == "cosine"  # the conditional entry: sampled only when its gate holds
        assert ("schedule.warmup_epochs" in t.params) == cosine == ("schedule.warmup_epochs" in t.user_attrs["overrides"])
        assert "[model]" in t.user_attrs["config_toml"]
        if t.state.name == "PRUNED":  # stopped by Ray's ASHA at a rung: epochs 1 or 2 of 3
            assert t.user_attrs["pruned_at"] == len(t.user_attrs["epochs"]) == len(t.intermediate_values) in (1, 2)
            assert t.user_attrs["status"] == "stopped"
        else:
            assert t.user_attrs["status"] == "completed" and t.user_attrs["test"]
            assert t.user_attrs["run_dir"] == f"trials/trial-{t.number}"  # relative to the output folder
            assert (out / t.user_attrs["run_dir"] / "metrics.json").is_file()
    # read back as TuneData: the report, the table and best.toml are those of the optuna backend
    data = load_tune(f"sqlite:///{out / 'study.db'}", "exp")
    assert sorted(t.number for t in data.trials) == list(range(6))
    counts = {s: sum(t.state == s for t in data.trials) for s in ("COMPLETE", "PRUNED")}
    html = (out / "report.html").read_text()
    assert f"<b>6</b> trials: <b>{counts['COMPLETE']}</b> complete · <b>{counts['PRUNED']}</b> pruned" in html
    assert f"trials: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, 0 failed" in r.stdout
    rows = [line for line in r.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == counts["COMPLETE"] and rows[0].split("│")[1].strip() == str(data.best[0])
    # best.toml trains the best trial again, to the same numbers
    from dltune.tuner.auto import train

    best = next(t for t in data.trials if t.number == data.best[0])
    again = train(load_config(out / "best.toml"))
    assert again.test == best.test and again.metric("val.accuracy") == best.values[0]
    assert (out / "best" / "model.safetensors").is_file()
    print(f"6-trial search on Ray, through the CLI: {seconds:.1f} s")


@pytest.mark.slow
def test_pbt_on_ray_records_each_members_generations_as_the_optuna_backend_does(ray_address: str,
                                                                                 tmp_path: Path) -> None:
    from dltune.study.pbt_search import latest_segments

    pbt = {"data": {"name": "digits", "limit": 400}, "model": {"hidden": [16]},
           "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "train": {"epochs": 2},
           "search": {"pruner": "pbt", "population": 4, "interval": 1,
                      "space": {"optim.lr": {"low": 1e-3, "high": 0.5, "log": True}}}}
    (tmp_path / "pbt.toml").write_text(tomli_w.dumps(pbt))
    out = tmp_path / "out"
    r = run_cli("tune", "pbt.toml", "--backend", "ray", "--address", ray_address, "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    trials = optuna.load_study(study_name="pbt", storage=f"sqlite:///{out / 'study.db'}").get_trials()
    # Ray's synchronous PBT: every member reports each generation's end with its checkpoint, recorded as a segment
    assert sorted(latest_segments(trials)) == [(m, g) for m in range(4) for g in range(2)] and len(trials) == 8
    by_number = {t.number: t for t in trials}
    for t in trials:
        seg = t.user_attrs["pbt"]
        assert t.state.name == ("COMPLETE" if seg["generation"] == 1 else "PRUNED")
        assert list(t.intermediate_values) == [seg["end"]] and seg["end"] == seg["generation"] + 1
        if seg["source"] is not None:  # it went on from the segment before it: its own, or its donor's
            source = by_number[seg["source"]].user_attrs["pbt"]
            assert source["end"] == seg["start"]
            assert source["member"] == (seg["copied_from"] if seg["copied_from"] is not None else seg["member"])
    assert "PBT: 4 members trained to the end, 4 segments of earlier generations" in r.stdout
    assert sum(t.user_attrs["pbt"]["copied_from"] is not None for t in trials) == 1  # the worst copied the best
    folders = sorted((out / "trials").iterdir())  # whole runs only: each member's last (a restart claims a new one)
    assert len(folders) == 4 and all((f / "metrics.json").is_file() for f in folders)
    assert sorted(t.user_attrs["run_dir"] for t in trials if t.state.name == "COMPLETE") == [
        f"trials/{f.name}" for f in folders]
    # best.toml: the best member's schedule, which train reproduces
    from dltune.tuner.auto import train

    data = load_tune(f"sqlite:///{out / 'study.db'}", "pbt")
    best = next(t for t in data.trials if t.number == data.best[0])
    assert train(load_config(out / "best.toml")).test == best.test


def test_a_search_from_python_uses_the_ray_this_process_joined(ray_address: str, tmp_path: Path) -> None:
    import ray

    data = tune(load_config(experiment(trials=2, pruner="none", space={"optim.lr": [0.01, 0.1]})),
                out_dir=tmp_path, backend="ray")
    assert [t.state for t in data.trials] == ["COMPLETE", "COMPLETE"] and (tmp_path / "best.toml").is_file()
    assert ray.is_initialized()  # the caller's Ray, left running


@pytest.mark.slow
def test_an_interrupted_search_on_ray_records_its_trials_as_interrupted_and_trains_them_next(
        ray_address: str, tmp_path: Path) -> None:
    from optuna.trial import TrialState

    from conftest import trials_in

    long = {**experiment(trials=2, pruner="none", space={"optim.lr": [0.01, 0.02]}),
            "data": {"name": "mnist-5k", "limit": 2000}, "model": {"hidden": [128]}, "train": {"epochs": 150}}
    seen: list[float] = []

    def stop() -> bool:  # once a trial has trained for a moment: Ctrl-C
        if not seen and trials_in(tmp_path / "study.db", "RUNNING"):
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] > 1.5

    with pytest.raises(KeyboardInterrupt):
        tune(load_config(long), out_dir=tmp_path, backend="ray", should_stop=stop)
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{tmp_path / 'study.db'}")
    cut = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert cut and all(t.user_attrs["interrupted"].startswith("the search was stopped (Ctrl-C) while it trained")
                       and "error" not in t.user_attrs for t in cut)
    queued = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert sorted(t.user_attrs["requeued_from"] for t in queued) == sorted(t.number for t in cut)
    data = tune(load_config(long), out_dir=tmp_path, backend="ray")  # run again: it trains the queued ones
    done = {t.number for t in data.trials if t.state == "COMPLETE"}
    assert len(done) == 2 and {t.number for t in queued} <= done
    assert [t.state for t in data.trials if t.number in {c.number for c in cut}] == ["INTERRUPTED"] * len(cut)


@pytest.mark.slow
def test_a_local_ray_starts_without_rays_token_warning(tmp_path: Path) -> None:
    """Ray 2.60 warns "Token authentication is enabled for this Ray cluster" when it starts a local instance; the
    search's output is the search's (docs/scaling.md says what Ray does)."""
    pytest.importorskip("ray")
    config = tmp_path / "exp.toml"
    config.write_text(tomli_w.dumps(experiment(trials=1, pruner="none", space={"optim.lr": [0.01, 0.1]})))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    r = subprocess.run([sys.executable, "-m", "dltune", "tune", str(config), "--backend", "ray", "--out",
                        str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Token authentication" not in r.stderr + r.stdout and "trials: 1 complete" in r.stdout


def test_without_ray_installed_the_error_says_how_to_install_it(tmp_path: Path) -> None:
    config = tmp_path / "exp.toml"
    config.write_text(tomli_w.dumps(experiment()))
    code = ("import sys; sys.modules['ray'] = None  # ray cannot be imported\n"
            "from dltune.cli import main; sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "tune", str(config), "--backend", "ray", "--out",
                        str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2
    assert "--backend ray: Ray Tune is not installed" in r.stderr and "pip install 'dltune[ray]'" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_an_unreachable_address_is_refused_within_seconds(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "exp.toml"
    config.write_text(tomli_w.dumps(experiment()))
    started = time.monotonic()
    r = run_main(capsys, "tune", str(config), "--backend", "ray", "--address", "127.0.0.1:1", "--out",
                 str(tmp_path / "out"))
    assert time.monotonic() - started < 30
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--address 127.0.0.1:1: no Ray cluster answers there (Connection refused)" in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("options", "message"), [
    ({"backend": "rey"}, "--backend: unknown backend 'rey'; known: optuna, ray"),
    ({"address": "127.0.0.1:6379"}, "--address: names a Ray cluster, for --backend ray only"),
    ({"backend": "ray", "jobs": 2}, "--jobs 2: not with --backend ray"),
    ({"backend": "ray", "storage": "sqlite:///x.db"}, "--storage: not with --backend ray"),
    ({"backend": "ray", "address": "head-without-port:x"}, "--address head-without-port:x: expected HOST:PORT"),
])
def test_flags_that_do_not_go_with_the_backend_are_refused(options: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        tune(load_config(experiment()), out_dir=tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()


def test_an_unknown_backend_from_the_cli_names_the_flag(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    r = run_main(capsys, "tune", "examples/seed_mnist.toml", "--backend", "rey", "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "argument --backend: invalid choice: 'rey'" in r.stderr


def test_the_command_line_and_the_optuna_backend_never_import_ray() -> None:
    code = "import sys, dltune.cli, dltune.study.tune, dltune.study.ray_backend; print('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.stdout.strip() == "False", done.stderr


@pytest.mark.parametrize("pruner", PRUNERS.names())
def test_every_pruner_maps_to_a_ray_scheduler(pruner: str) -> None:
    pytest.importorskip("ray.tune")
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, MedianStoppingRule

    from dltune.study.ray_backend import scheduler_for

    search = load_config(experiment(pruner=pruner, min_epochs=1, reduction_factor=3)).search
    if pruner == "pbt":  # Ray's PopulationBasedTraining needs the space: study.ray_pbt builds it (tested below)
        with pytest.raises(ValueError, match="PopulationBasedTraining, built by study.ray_pbt"):
            scheduler_for(search, 30, "maximize")
        return
    if pruner == "percentile":
        with pytest.raises(ConfigError, match="search.pruner: 'percentile' with --backend ray"):
            scheduler_for(search, 30, "maximize")
        return
    scheduler = scheduler_for(search, 30, "maximize")
    expected = {"none": FIFOScheduler, "median": MedianStoppingRule}.get(pruner, AsyncHyperBandScheduler)
    assert type(scheduler) is expected
    if isinstance(scheduler, AsyncHyperBandScheduler):  # the optuna backend's rungs: epochs 1, 3, 9 and 27 of 30
        milestones = sorted(m for m, _ in scheduler._brackets[0]._rungs)
        assert [m for m in milestones if m < 30] == rungs(1, 3, 30) == [1, 3, 9, 27]
        assert len(scheduler._brackets) == (4 if pruner == "hyperband" else 1)  # Optuna's ⌊log_3(30)⌋ + 1
    assert scheduler_for(search.model_copy(update={"min_epochs": 30}), 30, "minimize").__class__ is FIFOScheduler


@pytest.mark.parametrize(("final", "epochs", "error", "interrupted", "state"), [
    ({"values": [0.9]}, 3, False, False, "COMPLETE"),
    ({"values": [0.9]}, 3, False, True, "COMPLETE"),  # it ended before the interrupt
    ({"error": "training diverged"}, 2, False, False, "FAIL"),
    (None, 2, False, False, "PRUNED"),  # a scheduler stopped it after two epochs
    (None, 2, True, False, "FAIL"),  # its worker died
    (None, 2, False, True, "FAIL"),  # Ctrl-C
    (None, 0, False, False, "FAIL"),  # never reported an epoch
])
def test_how_a_ray_trial_ends_in_the_study(final: dict | None, epochs: int, error: bool, interrupted: bool,
                                           state: str) -> None:
    pytest.importorskip("ray.tune")
    from dltune.study.ray_trials import ending

    assert ending(final, epochs, error, interrupted) == state


@pytest.mark.parametrize(("finished", "running", "late", "failed", "move"), [
    (0, 0, False, 0, "start"),
    (3, 2, False, 0, "start"),
    (4, 2, False, 0, "wait"),  # the running trials may reach the target, or fail and leave room
    (6, 0, False, 0, "finished"),
    (2, 1, True, 0, "finished"),  # past --timeout: none starts, the running ones end
    (2, 0, False, 10, "finished"),  # ten failures in a row
])
def test_when_the_search_starts_waits_or_ends(finished: int, running: int, late: bool, failed: int, move: str) -> None:
    pytest.importorskip("ray.tune")
    from dltune.study.ray_trials import next_suggestion

    assert next_suggestion(finished, running, 6, late=late, failed_in_a_row=failed) == move


def test_a_gpu_named_by_index_is_refused_with_ray_which_gives_each_trial_its_own(tmp_path: Path) -> None:
    config = override(load_config(experiment()), {"train.device": "cuda:1"})
    with pytest.raises(ConfigError, match=re.escape('train.device: cuda:1 with --backend ray, which gives each trial '
                                                    'one GPU of its own (seen there as cuda:0); use "cuda" or "auto"')):
        tune(config, out_dir=tmp_path / "out", backend="ray")
    assert not (tmp_path / "out").exists()
