"""What was written before the modules moved into rooms (issue 26) still loads, resumes and reports.

tests/fixtures/format-2026-12/ holds run folders, a search and an ablation written by the dltune of 2026-12-06
(its make.py says how): a finished run, a run killed in epoch 3 and one paused at epoch 2 (their checkpoints of
epoch 2), a search of 3 trials in study.db and an ablation of one variant on 2 seeds. Each is copied to a fresh
folder and taken up by today's code, from the CLI as a user would."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest
from sklearn.datasets import load_digits

from conftest import ROOT, run_main
from dltune.errors import ConfigError
from dltune.experiment.config import load_config, override
from dltune import train

FIXTURE = ROOT / "tests" / "fixtures" / "format-2026-12"


@pytest.fixture
def old(tmp_path: Path) -> Path:
    """A copy of the fixture folder: the tests write into what they take up."""
    shutil.copytree(FIXTURE, tmp_path / "old")
    return tmp_path / "old"


def _epochs(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "metrics.json").read_text())["epochs"]


def _saved_history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "checkpoint" / "state.json").read_text())["loop"]["history"]


def test_a_finished_run_is_complete_and_predicts(old: Path, capsys: pytest.CaptureFixture[str]) -> None:
    again = run_main(capsys, "train", "--resume", str(old / "done"))
    assert again.returncode == 0 and "the run is complete (metrics.json); nothing to resume" in again.stderr
    x = load_digits().data[:5].astype(np.float32)
    np.savez(old / "x.npz", x=x)
    predicted = run_main(capsys, "predict", str(old / "done"), "--input", str(old / "x.npz"), "--json", cwd=old)
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout)["examples"] == 5 and len(json.loads(predicted.stdout)["labels"]) == 5


@pytest.mark.parametrize("name", ["killed", "paused"])
def test_a_killed_or_paused_run_goes_on_from_its_checkpoint(old: Path, name: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    before = _saved_history(old / name)
    resumed = run_main(capsys, "train", "--resume", str(old / name))
    assert resumed.returncode == 0, resumed.stderr
    epochs = _epochs(old / name)
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4] and epochs[:2] == before
    assert not (old / name / "checkpoint").exists()


def test_a_paused_run_goes_on_from_python(old: Path) -> None:
    before = _saved_history(old / "paused")
    asked: list[int] = []
    result = train(load_config(old / "paused" / "config.toml"), on_epoch=lambda e, r: asked.append(e),
                   out_dir=old / "paused", resume=True)
    assert result.status == "completed" and asked == [2, 3, 4] and result.epochs[:2] == before


def test_a_search_goes_on_with_its_trials_kept_and_reports(old: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = f"sqlite:///{old / 'search' / 'study.db'}"
    kept = [(t.number, t.state, t.params, t.values) for t in optuna.load_study(study_name="experiment",
                                                                               storage=storage).trials]
    assert len(kept) == 3
    more = run_main(capsys, "tune", str(old / "experiment.toml"), "--out", str(old / "search"), "--trials", "4",
                    "--json")
    assert more.returncode == 0, more.stderr
    trials = optuna.load_study(study_name="experiment", storage=storage).trials
    assert [(t.number, t.state, t.params, t.values) for t in trials[:3]] == kept and len(trials) >= 4
    assert (old / "search" / "report.html").is_file() and (old / "search" / "best.toml").is_file()


def test_an_ablation_reports_the_same_table(old: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = (old / "ablation" / "results.md").read_text()
    reported = run_main(capsys, "report", str(old / "ablation"))
    assert reported.returncode == 0, reported.stderr
    assert (old / "ablation" / "report.html").is_file() and (old / "ablation" / "results.md").read_text() == table


def test_an_ablation_goes_on_with_a_seed_more(old: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Keys added since (train.precision, model.channels_last) left at their defaults leave the ablation's
    fingerprint as it was stored: its 4 runs are kept and only the third seed's 2 are trained."""
    more = run_main(capsys, "ablate", str(old / "experiment.toml"), "--out", str(old / "ablation"), "--seeds", "3",
                    "--json")
    assert more.returncode == 0, more.stderr
    runs = optuna.load_study(study_name="experiment", storage=f"sqlite:///{old / 'ablation' / 'study.db'}").trials
    assert len(runs) == 6 and sorted(t.number for t in runs) == list(range(6))


def test_a_run_resumed_in_another_precision_is_refused(old: Path) -> None:
    config = load_config(old / "paused" / "config.toml")
    with pytest.raises(ConfigError, match="the experiment differs from the run's config.toml"):
        train(override(config, {"train.precision": "bf16"}), out_dir=old / "paused", resume=True)
