"""[tracking]: TensorBoard event files and MLflow runs, read back with TensorBoard's EventAccumulator and MLflow's
MlflowClient, for a run, an ablation and a search."""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dltune.experiment.config import load_config
from dltune.study.ablate import ablate
from dltune.study.tune import tune
from dltune import train

from conftest import ROOT, run_cli, run_main

QUICK = {"data": {"name": "digits", "limit": 500}, "model": {"hidden": [16]}, "train": {"epochs": 3}}
SCALARS = {"train.loss", "val.loss", "val.accuracy", "val.macro_f1", "lr", "batch_size", "samples_per_second",
           "seconds"}


def _runs(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} in {uri}"
    return client.search_runs([found.experiment_id])


def test_a_run_in_tensorboard_and_mlflow_read_back_by_their_own_readers(tmp_path: Path) -> None:
    uri_before = mlflow.get_tracking_uri()
    config = load_config({**QUICK, "tracking": {"tensorboard": str(tmp_path / "tb"), "mlflow": True,
                                                "experiment": "digits-mlp"}})
    result = train(config, out_dir=tmp_path / "runs" / "first")
    assert mlflow.get_tracking_uri() == uri_before  # the caller's tracking URI is left alone

    events = EventAccumulator(str(tmp_path / "tb" / "digits-mlp" / "first"))
    events.Reload()
    assert SCALARS <= set(events.Tags()["scalars"])
    for name in SCALARS:  # every scalar, every epoch, the value the history holds
        split, _, metric = name.partition(".")
        expected = [r[split][metric] if metric else r[split] for r in result.epochs]
        assert [e.step for e in events.Scalars(name)] == [1, 2, 3]
        assert [e.value for e in events.Scalars(name)] == pytest.approx(expected, rel=1e-6)
    hparams = events.PluginTagToContent("hparams")  # the run's settings, for TensorBoard's HParams tab
    assert any(b"optim.lr" in content and b"model.hidden" in content for content in hparams.values())

    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    (run,) = _runs(uri, "digits-mlp")
    client = MlflowClient(uri)
    assert run.info.run_name == "first" and run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == "0.001" and run.data.params["model.hidden"] == "[16]"
    for name in SCALARS:
        history = client.get_metric_history(run.info.run_id, name)
        split, _, metric = name.partition(".")
        expected = [r[split][metric] if metric else r[split] for r in result.epochs]
        assert [m.step for m in history] == [1, 2, 3] and [m.value for m in history] == pytest.approx(expected)
    assert run.data.metrics["test.accuracy"] == pytest.approx(result.test["accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"config.toml", "environment.json", "metrics.json", "model.safetensors"}  # no checkpoint/.lock


def test_a_failed_run_is_marked_failed(tmp_path: Path) -> None:
    config = load_config({**QUICK, "tracking": {"mlflow": True}})

    def stop(epoch: int, record: dict) -> None:
        raise RuntimeError("the user's hook broke")

    with pytest.raises(RuntimeError):
        train(config, on_epoch=stop, out_dir=tmp_path / "runs" / "broken")
    (run,) = _runs(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", "dltune")
    assert run.info.status == "FAILED"


@pytest.mark.slow
def test_an_ablation_and_a_search_are_one_experiment_each_a_run_per_trial(tmp_path: Path) -> None:
    tracked = {"mlflow": True, "tensorboard": str(tmp_path / "tb")}
    data = ablate(load_config({**QUICK, "tracking": tracked,
                               "ablation": {"seeds": 2, "variants": {"lr-3e-3": {"optim.lr": 3e-3}}}}),
                  out_dir=tmp_path / "ablation", jobs=2, name="abl")
    runs = _runs(f"sqlite:///{tmp_path / 'ablation' / 'mlflow.db'}", "abl")
    tags = sorted((r.data.tags["variant"], r.data.tags["seed"]) for r in runs)
    assert tags == sorted((r.variant, str(r.seed)) for r in data.results) and len(tags) == 4
    assert all(r.info.status == "FINISHED" for r in runs)

    searched = tune(load_config({**QUICK, "tracking": {"mlflow": True},
                                 "search": {"trials": 4, "pruner": "none",
                                            "space": {"optim.lr": {"low": 1e-3, "high": 1e-2, "log": True}}}}),
                    out_dir=tmp_path / "search", jobs=2, study="srch")
    runs = _runs(f"sqlite:///{tmp_path / 'search' / 'mlflow.db'}", "srch")
    ran = [t for t in searched.trials if t.state != "WAITING"]  # WAITING: created for a place already taken, never run
    assert sorted(r.info.run_name for r in runs) == sorted(f"trial-{t.number}" for t in ran) and len(ran) == 4
    by_trial = {int(r.data.tags["trial"]): r for r in runs}
    for t in ran:  # the run of a trial logged what the trial recorded
        assert by_trial[t.number].data.metrics["test.accuracy"] == pytest.approx(t.test["accuracy"])
        assert by_trial[t.number].data.params["optim.lr"] == str(t.params["optim.lr"])


def test_an_unreachable_mlflow_is_an_error_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start = time.monotonic()
    r = run_main(capsys, "train", str(ROOT / "examples" / "seed_mnist.toml"), "--set",
                 "tracking.mlflow=http://127.0.0.1:1/", "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "tracking.mlflow = 'http://127.0.0.1:1/': cannot log there" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "run").exists()
    r = run_main(capsys, "ablate", str(ROOT / "examples" / "seed_mnist.toml"), "--set",
                 "tracking.mlflow=http://127.0.0.1:1/", "--out", str(tmp_path / "ablation"))
    assert r.returncode == 2 and "cannot log there" in r.stderr and not (tmp_path / "ablation").exists()
    assert time.monotonic() - start < 120  # no minutes of retries


def test_the_run_folder_is_logged_as_artifacts_and_the_cli_names_runs_by_folder(tmp_path: Path) -> None:
    r = run_cli("train", str(ROOT / "examples" / "seed_mnist.toml"), "--set", "train.epochs=1", "--set",
                "data.limit=500", "--set", "tracking.mlflow=true", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir = Path(json.loads(r.stdout)["run_dir"])
    (run,) = _runs(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", "seed_mnist")
    assert run.info.run_name == run_dir.name
