"""Ablations: planning and bad variants, storage, resume after a kill, report from storage alone."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from dltune.study.ablate import ablate, default_storage, load_ablation, plan
from dltune.cli import main
from dltune.experiment.config import load_config
from dltune.errors import ConfigError

from conftest import POSTGRES, ROOT, run_main, trials_in

TINY = {"data": {"name": "digits", "limit": 400}, "model": {"hidden": [16]}, "train": {"epochs": 2},
        "ablation": {"seeds": 2, "variants": {"lr-3e-3": {"optim.lr": 3e-3}, "batch-32": {"batch": {"size": 32}}}}}


def _write(path: Path, experiment: dict) -> Path:
    import tomli_w

    path.write_text(tomli_w.dumps(experiment))
    return path


def test_plan_independent_and_cumulative() -> None:
    variants = {"a": {"optim.lr": 3e-3}, "b": {"batch.size": 32}}
    independent = plan(load_config({"ablation": {"variants": variants}}))
    assert [v.name for v, _ in independent] == ["baseline", "a", "b"]
    assert independent[2][1].optim.lr == 1e-3 and independent[2][1].batch.size == 32
    cumulative = plan(load_config({"ablation": {"mode": "cumulative", "variants": variants}}))
    assert cumulative[2][0].applied == {"optim.lr": 3e-3, "batch.size": 32}
    assert cumulative[2][1].optim.lr == 3e-3 and cumulative[2][1].batch.size == 32


@pytest.mark.parametrize(("variants", "message"), [
    ({"fast": {"optim.lrr": 1.0}}, "ablation.variants.fast: invalid experiment:\n  optim.lrr: unknown key"),
    ({"fast": {"optim.lr": -1.0}}, "ablation.variants.fast: invalid experiment:\n  optim.lr: Input should be greater than 0"),
    ({"warm": {"schedule.name": "cosin"}}, "ablation.variants.warm: schedule.name: unknown schedule 'cosin'"),
    ({"empty": {}}, "ablation.variants.empty: changes nothing"),
    ({"baseline": {"optim.lr": 1.0}}, "ablation.variants.baseline: the name 'baseline' is taken"),
])
def test_bad_variants_are_rejected_before_training(variants: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        ablate(load_config({"ablation": {"variants": variants}}), out_dir=tmp_path / "out")
    assert message in str(e.value)
    assert not (tmp_path / "out").exists()


def test_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write(tmp_path / "exp.toml", TINY)
    assert main(["ablate", str(config), "--seeds", "0", "--out", str(tmp_path / "a")]) == 2
    assert "--seeds: must be at least 1" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["ablate", str(config), "--out", str(blocker / "sub")]) == 2
    assert "cannot write there" in capsys.readouterr().err
    url = "postgresql://dltune:s3cret-pw@127.0.0.1:1/nowhere"
    assert main(["ablate", str(config), "--out", str(tmp_path / "b"), "--storage", url]) == 2
    err = capsys.readouterr().err
    assert "cannot open the storage" in err and "postgresql://dltune:***@127.0.0.1:1/nowhere" in err
    assert "s3cret-pw" not in err


def test_ablation_storage_table_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write(tmp_path / "exp.toml", TINY)
    out = tmp_path / "out"
    assert main(["ablate", str(config), "--out", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["variant"] for r in rows] == ["baseline", "lr-3e-3", "batch-32"] and all(r["n"] == 2 for r in rows)
    study = optuna.load_study(study_name="exp", storage=default_storage(out))
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 6
    attrs = trials[0].user_attrs
    assert {"variant", "seed", "test", "epochs", "train_seconds", "samples_per_second", "parameters"} <= set(attrs)
    assert trials[0].value == attrs["test"]["accuracy"] and len(trials[0].intermediate_values) == 2
    assert sorted((t.user_attrs["variant"], t.user_attrs["seed"]) for t in trials) == sorted(
        (v, s) for v in ("baseline", "lr-3e-3", "batch-32") for s in (1, 2))
    assert (out / "report.html").exists() and (out / "results.md").exists()
    assert (out / "runs" / "batch-32" / "seed-2" / "model.safetensors").exists()

    # the report from the storage alone: run folders and report files gone
    shutil.rmtree(out / "runs")
    (out / "report.html").unlink()
    assert main(["report", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == rows
    assert "<table" in (out / "report.html").read_text()

    # running again trains nothing
    before = [(t.number, t.datetime_complete) for t in trials]
    assert main(["ablate", str(config), "--out", str(out), "--json"]) == 0
    again = optuna.load_study(study_name="exp", storage=default_storage(out))
    assert [(t.number, t.datetime_complete) for t in again.get_trials()] == before


def test_a_different_ablation_in_the_same_output_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ablate(load_config({**TINY, "ablation": {"seeds": 1, "variants": {"a": {"optim.lr": 3e-3}}}}), out_dir=out)
    with pytest.raises(ConfigError, match="already holds a different ablation"):
        ablate(load_config({**TINY, "ablation": {"seeds": 1, "variants": {"a": {"optim.lr": 1e-2}}}}), out_dir=out)
    assert len(load_ablation(default_storage(out)).results) == 2


def test_report_without_a_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "no study.db here" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_after_a_kill(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Kill an ablation mid-way with SIGKILL; run it again: completed pairs untouched, the rest run."""
    experiment = {"data": {"name": "mnist-5k", "limit": 2000}, "model": {"hidden": [256]}, "train": {"epochs": 4},
                  "ablation": {"seeds": 2, "variants": {"lr": {"optim.lr": 3e-3}, "b64": {"batch.size": 64}}}}
    config, out = _write(tmp_path / "exp.toml", experiment), tmp_path / "out"
    command = [sys.executable, "-m", "dltune", "ablate", str(config), "--out", str(out)]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    storage = default_storage(out)
    deadline = time.time() + 120
    completed: list = []
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
        completed = trials_in(out / "study.db", "COMPLETE")
        if len(completed) >= 2:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 <= len(completed) < 6, "the kill must land mid-way"
    study = optuna.load_study(study_name="exp", storage=storage)
    kept = {t.number: (t.value, t.datetime_complete, t.user_attrs) for t in study.get_trials(
        states=(TrialState.COMPLETE,))}
    files = {n: (out / a["run_dir"] / "metrics.json").stat().st_mtime_ns for n, (_, _, a) in kept.items()}

    finished = run_main(capsys, *command[3:])  # the same command, through the CLI's main in this process
    assert finished.returncode == 0, finished.stderr
    study = optuna.load_study(study_name="exp", storage=storage)
    done = {t.number: t for t in study.get_trials(states=(TrialState.COMPLETE,))}
    for number, (value, when, attrs) in kept.items():  # untouched
        assert (done[number].value, done[number].datetime_complete, done[number].user_attrs) == (value, when, attrs)
        assert (out / attrs["run_dir"] / "metrics.json").stat().st_mtime_ns == files[number]
    assert sorted((t.user_attrs["variant"], t.user_attrs["seed"]) for t in done.values()) == sorted(
        (v, s) for v in ("baseline", "lr", "b64") for s in (1, 2))
    assert not study.get_trials(states=(TrialState.RUNNING,))




def test_ablation_in_postgresql(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Any Optuna storage URL: the PostgreSQL server of the test machine, for real."""
    import uuid

    name = f"dltune-test-{uuid.uuid4().hex[:8]}"
    experiment = {**TINY, "ablation": {"seeds": 1, "variants": {"lr-3e-3": {"optim.lr": 3e-3}}}}
    try:
        data = ablate(load_config(experiment), out_dir=tmp_path / "out", storage=POSTGRES, name=name)
        assert data.study == name and len(data.results) == 2
        assert not (tmp_path / "out" / "study.db").exists()
        assert main(["report", str(tmp_path / "out"), "--storage", POSTGRES, "--study", name, "--json"]) == 0
        assert [r["variant"] for r in json.loads(capsys.readouterr().out)] == ["baseline", "lr-3e-3"]
    finally:
        try:
            optuna.delete_study(study_name=name, storage=POSTGRES)
        except KeyError:
            pass


def test_every_bad_variant_is_reported_at_once(tmp_path: Path) -> None:
    variants = {"ok": {"optim.lr": 3e-3}, "fast": {"optim.lrr": 1.0}, "warm": {"schedule.name": "cosin"},
                "empty": {}}
    with pytest.raises(ConfigError) as e:
        ablate(load_config({"ablation": {"variants": variants}}), out_dir=tmp_path / "out")
    message = str(e.value)
    assert message.startswith("3 variants are invalid:")
    for part in ("ablation.variants.fast: invalid experiment:", "optim.lrr: unknown key",
                 "ablation.variants.warm: schedule.name: unknown schedule 'cosin'",
                 "ablation.variants.empty: changes nothing"):
        assert part in message
    assert "variants.ok" not in message and not (tmp_path / "out").exists()


def test_the_cli_and_python_continue_one_ablation_in_one_folder(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    exp = _write(tmp_path / "tiny.toml", TINY)
    out = tmp_path / "abl"
    assert run_main(capsys, "ablate", str(exp), "--seeds", "1", "--out", str(out)).returncode == 0
    assert optuna.study.get_all_study_names(default_storage(out)) == ["tiny"]  # named after the file
    again = ablate(load_config(exp), out_dir=out, seeds=2)  # a config built in code: the one ablation there
    assert again.study == "tiny" and len(again.results) == 6
    assert optuna.study.get_all_study_names(default_storage(out)) == ["tiny"]
    assert ablate(exp, out_dir=tmp_path / "py").study == "tiny"  # from Python by path: the file's stem too
    assert ablate(load_config(exp), out_dir=tmp_path / "code", seeds=1).study == "ablation"  # nothing stored yet
