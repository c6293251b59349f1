from __future__ import annotations

import json
from pathlib import Path

import pytest

from dltune.cli import build_parser, main
from dltune.data import DATASETS
from dltune.models import MODELS

from conftest import ROOT, run_cli


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
