"""Warm starts (`[search] enqueue`, `dltune tune --enqueue FILE`): the settings given are trained first, in order, as
given and once, with several workers and across runs of the search; a setting that is not a point of the search's
space is refused before anything is written, naming it and the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import optuna
import pytest
import tomli_w
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from conftest import run_main
from dltune import load_config, tune
from dltune.errors import ConfigError

SPACE = {"optim.lr": {"low": 1e-3, "high": 1e-1, "log": True}, "model.activation": ["relu", "gelu"],
         "model.hidden": {"depth": [1, 2], "width": [16, 64], "log": True}}
EXPERIMENT = {"data": {"name": "digits", "limit": 400}, "model": {"hidden": [32]}, "train": {"epochs": 2},
              "search": {"trials": 5, "space": SPACE,
                         "enqueue": [{"optim.lr": 0.003, "model.activation": "gelu"}, {"optim.lr": 0.01}]}}
# an earlier search's best.toml, as a user would pass it: the same experiment, other values of the space's keys
BEST = {"data": {"name": "digits", "limit": 400}, "model": {"hidden": [48, 20], "activation": "relu"},
        "optim": {"lr": 0.02}, "train": {"epochs": 2}, "search": {"trials": 3, "space": {"optim.lr": [0.5]}}}


def trials_of(out: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="exp", storage=JournalStorage(JournalFileBackend(str(out / "journal.log")))
                             ).trials


def trained(out: Path, number: int) -> dict:
    return tomllib.loads((out / "trials" / f"trial-{number}" / "config.toml").read_text())


def test_enqueued_settings_train_first_in_order_once_with_two_workers(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "exp.toml").write_text(tomli_w.dumps(EXPERIMENT))
    out = tmp_path / "out"
    first = run_main(capsys, "tune", "exp.toml", "--out", str(out), "--jobs", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    trials = trials_of(out)
    assert [t.user_attrs.get("enqueued") for t in trials[:2]] == [0, 1]
    assert trials[0].params == {"model.activation": "gelu", "model.hidden.depth": 1, "model.hidden[0]": 32,
                                "optim.lr": 0.003}
    assert trials[1].params["optim.lr"] == 0.01 and trials[1].params["model.activation"] == "relu"
    run = trained(out, 0)  # trained as given: the setting's values, the experiment's for the keys it leaves
    assert run["optim"]["lr"] == 0.003 and run["model"]["activation"] == "gelu" and run["model"]["hidden"] == [32]

    # a later run adds a file (the fingerprint leaves search.enqueue out: the same search goes on); the inline
    # settings, tried already, are not queued again
    (tmp_path / "best.toml").write_text(tomli_w.dumps(BEST))
    more = run_main(capsys, "tune", "exp.toml", "--out", str(out), "--jobs", "2", "--more", "2", "--enqueue",
                    "best.toml", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    trials = trials_of(out)
    enqueued = [t for t in trials if "enqueued" in t.user_attrs]
    assert len(enqueued) == 3 and trials[5].user_attrs.get("enqueued") == 2  # the file's, first of the new ones
    assert trials[5].params == {"model.activation": "relu", "model.hidden.depth": 2, "model.hidden[0]": 48,
                                "model.hidden[1]": 20, "optim.lr": 0.02}
    assert trained(out, 5)["model"]["hidden"] == [48, 20]
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials) and len(trials) == 7


@pytest.mark.parametrize(("enqueue", "message"), [
    ([{"optim.momentum": 0.9}], "search.enqueue[0]: optim.momentum is not a key of [search.space]"),
    ([{"optim.lr": 0.5}], "search.enqueue[0]: optim.lr = 0.5 is outside the space's range (0.001 to 0.1)"),
    ([{"optim.lr": 0.01}, {"model.activation": "tanh"}],
     "search.enqueue[1]: model.activation = 'tanh' is not one of the space's choices ('relu', 'gelu')"),
    ([{"model.hidden": [8]}], "search.enqueue[0]: model.hidden = [8] is outside the space's layers"),
    (["other.toml"], "search.enqueue[0] ("),
    (["missing.toml"], "search.enqueue[0]: "),
])
def test_a_setting_that_is_not_a_point_of_the_space_is_refused_naming_it(
        enqueue: list, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "other.toml").write_text(tomli_w.dumps({**BEST, "optim": {"lr": 0.02, "name": "sgd"}}))
    (tmp_path / "exp.toml").write_text(tomli_w.dumps({**EXPERIMENT, "search": {**EXPERIMENT["search"],
                                                                               "enqueue": enqueue}}))
    done = run_main(capsys, "tune", "exp.toml", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
    if enqueue == ["other.toml"]:
        assert "sets optim.name = 'sgd' where the search's experiment has 'adam'" in done.stderr


def test_from_python_a_file_is_enqueued_and_ray_refuses_queued_trials(tmp_path: Path) -> None:
    (tmp_path / "best.toml").write_text(tomli_w.dumps(BEST))
    config = load_config({**EXPERIMENT, "search": {**EXPERIMENT["search"], "enqueue": [], "trials": 2}})
    data = tune(config, out_dir=tmp_path / "out", enqueue=[tmp_path / "best.toml"])
    first = next(t for t in data.trials if t.number == 0)
    assert first.params["optim.lr"] == 0.02 and first.params["model.hidden"] == [48, 20]
    with pytest.raises(ConfigError, match=r"search\.enqueue: not with --backend ray yet"):
        tune(config, out_dir=tmp_path / "ray", enqueue=[tmp_path / "best.toml"], backend="ray")
    assert not (tmp_path / "ray").exists()
