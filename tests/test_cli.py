from __future__ import annotations

import json
from pathlib import Path

import pytest

from dltune.cli import build_parser, main
from dltune.data import DATASETS
from dltune.models import MODELS

from conftest import ROOT, run_cli, run_main


def test_train_json_is_one_document_on_stdout(tmp_path: Path) -> None:
    r = run_cli("train", "examples/seed_mnist.toml", "--set", "train.epochs=2", "--set", "data.limit=1000",
                "--out", str(tmp_path / "run"), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert {"status", "test", "epochs", "train_seconds", "samples_per_second", "run_dir"} <= set(doc)
    assert doc["status"] == "completed" and doc["run_dir"] == str(tmp_path / "run")
    assert 0.5 < doc["test"]["accuracy"] <= 1 and len(doc["epochs"]) == 2
    assert "epoch 2/2" in r.stderr  # progress goes to stderr with --json


def test_train_prints_epochs_and_test_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "examples/seed_mnist.toml", "--set", "train.epochs=2", "--set", "data.limit=1000",
                 "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "epoch 1/2  train loss" in out and "epoch 2/2" in out
    assert "test.accuracy" in out and f"run folder: {tmp_path / 'run'}" in out


def test_an_existing_run_is_never_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "examples/seed_mnist.toml", "--set", "train.epochs=1", "--set", "data.limit=500",
            "--out", str(tmp_path / "run")]
    assert main(args) == 0
    before = (tmp_path / "run" / "metrics.json").read_bytes()
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "run" / "metrics.json").read_bytes() == before


def test_a_diverged_run_says_where_and_what_to_try(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = run_main(capsys, "train", "examples/seed_mnist.toml", "--set", "optim.lr=1e6", "--set", "optim.name=sgd",
                 "--set", "data.limit=1000", "--out", str(tmp_path / "run"))
    assert r.returncode == 1, r.stderr  # the run ended, and failed
    assert r.stderr.splitlines()[-1].startswith("dltune train: the run diverged at epoch 1 (loss nan, lr 1e+06); ")
    assert "epoch  1/10  train loss nan" in r.stdout  # the epoch it diverged in has its line too
    assert "diverged at epoch 1, batch " in r.stdout and "one batch before" in r.stdout and "lr 1e+06" in r.stdout
    assert "dltune lr-find examples/seed_mnist.toml" in r.stdout and "status diverged · 1 epoch ·" in r.stdout
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["divergence"]["epoch"] == 1


def test_unwritable_out_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", "examples/seed_mnist.toml", "--out", str(blocker / "run")]) == 2
    assert "cannot write there" in capsys.readouterr().err


def test_default_run_folder_is_under_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(ROOT / "examples" / "seed_mnist.toml"), "--set", "train.epochs=1",
                 "--set", "data.limit=500", "--json"]) == 0
    run_dir = Path(json.loads(capsys.readouterr().out)["run_dir"])
    assert run_dir.parent == Path("runs") and run_dir.name.startswith("seed_mnist-")
    assert (tmp_path / run_dir / "model.safetensors").exists()


@pytest.mark.parametrize(("command", "registry"), [("datasets", DATASETS), ("models", MODELS)])
def test_listings(command: str, registry, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == registry.names() and all(r["description"] for r in rows)
    assert main([command]) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in registry.names())


@pytest.mark.parametrize("command", [[], ["train"], ["config"], ["datasets"], ["models"]])
def test_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*command, "--help"])
    assert e.value.code == 0
    assert "usage: dltune" in capsys.readouterr().out


def test_a_study_on_a_terminal_shows_a_bar_with_its_count_eta_and_best() -> None:
    import io

    from dltune.cli.progress import StudyProgress

    stream = io.StringIO()
    with StudyProgress("tune", stream, maximize=True, terminal=True) as progress:
        progress.start(2, 6)  # a resumed study: 2 of its 6 trials finished before
        progress.ended("trial 2: 0.91  (optim.lr=0.001)", True, 0.91, "trial 2")
        progress.ended("trial 3: failed: boom", False)
        progress.ended("trial 4: 0.95  (optim.lr=0.003)", True, 0.95, "trial 4")
        progress.ended("trial 5: 0.93  (optim.lr=0.002)", True, 0.93, "trial 5")
        progress.progress.refresh()
        shown = stream.getvalue()
    assert "trial 3: failed: boom" in shown and "5/6" in shown and "ETA" in shown
    assert "best 0.95 (trial 4)" in shown
    plain = io.StringIO()  # in a pipe or a log: the lines, nothing else
    with StudyProgress("tune", plain, maximize=False) as progress:
        progress.start(0, 2)
        progress.ended("trial 0: 0.3", True, 0.3, "trial 0")
    assert plain.getvalue() == "trial 0: 0.3\n"


def test_no_arguments_print_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    done = run_main(capsys)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    for command in ("train", "ablate", "tune", "worker", "lr-find", "compress", "ensemble", "predict"):
        assert f"\n  {command} " in done.stderr or f"\n    {command} " in done.stderr, done.stderr


@pytest.mark.parametrize(("typed", "meant"), [("trian", "train"), ("tunne", "tune"), ("predcit", "predict"),
                                              ("lr_find", "lr-find")])
def test_a_mistyped_command_gets_did_you_mean(typed: str, meant: str, capsys: pytest.CaptureFixture[str]) -> None:
    done = run_main(capsys, typed, "x.toml")
    assert done.returncode == 2 and f"unknown command {typed!r} (did you mean {meant!r}?)" in done.stderr
    assert "Traceback" not in done.stderr


def test_version_prints_the_installed_version_and_exits_0_without_torch() -> None:
    import subprocess
    import sys
    from importlib.metadata import version

    done = run_cli("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"dltune {version('dltune')}\n" and done.stderr == ""
    probe = ("import contextlib, io, sys\nfrom dltune.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()) as said:\n"
             "    try:\n        main(['--version'])\n    except SystemExit as e:\n        code = e.code\n"
             "print(code, said.getvalue().split()[0], sorted({'torch', 'optuna', 'rich'} & set(sys.modules)))\n")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert loaded.stdout.strip() == "0 dltune []", loaded.stderr
