"""Your own model, data, loss and metric by import path (examples/own_model/), through every command; bad user code
is a clear error that names the key and writes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import optuna
import pytest
import torch

from dltune.experiment.config import load_config
from dltune import train

from conftest import POSTGRES, ROOT, run_cli, run_main

OWN = ROOT / "examples" / "own_model" / "own_model.toml"
QUICK = ["--set", "train.epochs=2", "--set", "data.args.limit=600"]


def test_train_with_the_users_model_data_loss_and_metric(tmp_path: Path) -> None:
    r = run_cli("train", str(OWN), *QUICK, "--out", str(tmp_path / "run"), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc["test"]) == {"loss", "accuracy", "macro_f1", "f2"} and 0 <= doc["test"]["f2"] <= 1
    assert all("f2" in e["val"] for e in doc["epochs"])  # recorded per epoch
    assert doc["data"]["source"].startswith("data.name = 'my_project.data:load'") and doc["data"]["sizes"]["test"] == 120
    config = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    assert config["code"]["paths"] == [str(OWN.parent)] and config["model"]["args"] == {"channels": 16, "blocks": 1}
    # the run folder's config.toml alone trains the same run again, from any folder
    again = run_cli("train", str(tmp_path / "run" / "config.toml"), "--out", str(tmp_path / "again"), "--json",
                    cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["test"] == doc["test"]


def test_the_users_metric_is_computed_on_the_runs_own_predictions() -> None:
    # against an independent reference: sklearn's F2 of the trained model's argmax on the test split
    from sklearn.metrics import fbeta_score

    from dltune.run.assembly import setup
    from dltune.run.runtime import torch_settings

    config = load_config(OWN, ["train.epochs=2", "data.args.limit=600"])
    result = train(config)
    with torch_settings(config):
        x, y = setup(config).splits.test
    result.model.eval()
    with torch.no_grad():
        predicted = result.model(x).argmax(dim=1).numpy()
    assert result.test["f2"] == pytest.approx(fbeta_score(y.numpy(), predicted, beta=2, average="macro",
                                                          zero_division=0))
    assert result.test["accuracy"] == pytest.approx(float((predicted == y.numpy()).mean()))


def test_the_users_model_has_batchnorm_and_its_scales_are_not_penalized() -> None:
    config = load_config(OWN, ["train.epochs=1", "data.args.limit=300", "regularization.l2=1e-3"])
    result = train(config)
    norms = [m for m in result.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and result.epochs[0]["train"]["penalty"] > 0
    from dltune.techniques.regularization import penalized_weights

    penalized = {id(p) for p in penalized_weights(result.model)}
    assert not any(id(p) in penalized for m in norms for p in m.parameters())  # BatchNorm scales and shifts: not
    with pytest.raises(Exception, match="regularization.dropconnect: this model has no hidden linear layers"):
        train(load_config(OWN, ["train.epochs=1", "regularization.dropconnect=0.2"]))


@pytest.mark.slow
def test_ablate_tune_with_jobs_and_the_finders_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the CLI's main in this process (each command's own process is tested elsewhere); --jobs 2 trains in fresh
    # processes, which import the user's code themselves
    r = run_main(capsys, "ablate", str(OWN), *QUICK, "--seeds", "1", "--out", str(tmp_path / "ablation"), "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["variant"]: row for row in json.loads(r.stdout)}
    assert set(rows) == {"baseline", "two-blocks", "plain-cross-entropy"} and rows["two-blocks"]["parameters"] > \
        rows["baseline"]["parameters"]
    study = optuna.load_study(study_name="own_model", storage=f"sqlite:///{tmp_path / 'ablation' / 'study.db'}")
    assert study.user_attrs["metric"] == "test.f2" and study.user_attrs["higher_is_better"] is True

    r = run_main(capsys, "tune", str(OWN), *QUICK, "--trials", "4", "--jobs", "2", "--out", str(tmp_path / "search"),
                 "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["objectives"] == ["val.f2"] and summary["directions"] == ["maximize"]
    assert summary["trials"]["complete"] == 4 and summary["best"][0]["test"]["f2"] > 0
    # the best trial, trained in a worker process, trained again here from best.toml alone
    again = run_main(capsys, "train", summary["best_config"], "--out", str(tmp_path / "best-again"), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["test"] == summary["best"][0]["test"]

    for command in (["lr-find", "--steps", "20", "--plot", str(tmp_path / "lr.png")],
                    ["batch-find", "--sizes", "16,64", "--plot", str(tmp_path / "b.png")]):
        r = run_main(capsys, command[0], str(OWN), *QUICK, *command[1:], "--json")
        assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_a_worker_joins_only_with_the_experiment_file(tmp_path: Path, pg_study: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    config = ["--set", "train.epochs=2", "--set", "data.args.limit=600", "--set", "search.trials=6"]
    # the storage alone never makes a worker import code: without --config it refuses, and runs nothing
    from dltune.experiment.config import to_toml
    from dltune.study.tune import create_study

    experiment = load_config(OWN, config[1::2])
    create_study(experiment, storage=POSTGRES, study=pg_study)
    on_this_machine = tmp_path / "worker.toml"  # the same experiment, as the worker's machine has it
    on_this_machine.write_text(to_toml(experiment))
    refused = run_main(capsys, "worker", "--storage", POSTGRES, "--study", pg_study, "--out", str(tmp_path / "refused"))
    assert refused.returncode == 2 and "runs code of your own (data.name = 'my_project.data:load')" in refused.stderr
    assert "--config" in refused.stderr and not (tmp_path / "refused").exists()
    tune = subprocess.Popen([sys.executable, "-m", "dltune", "tune", str(OWN), *config, "--storage", POSTGRES,
                             "--study", pg_study, "--out", str(tmp_path / "tune")], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker = subprocess.Popen([sys.executable, "-m", "dltune", "worker", "--storage", POSTGRES, "--study", pg_study,
                               "--config", str(on_this_machine), "--out", str(tmp_path / "worker")], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = [p.communicate(timeout=300) for p in (tune, worker)]
    assert tune.returncode == 0 and worker.returncode == 0, outputs
    trials = optuna.load_study(study_name=pg_study, storage=POSTGRES).get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 6 and all("f2" in t.user_attrs["test"] for t in complete)
    assert "trial" in outputs[1][0]  # the worker ran trials of its own
    other = run_main(capsys, "worker", "--storage", POSTGRES, "--study", pg_study, "--config", str(OWN))
    assert other.returncode == 2 and "--config: holds another experiment or search" in other.stderr


# --- bad user code -----------------------------------------------------------------------------------------------

BAD_CODE = '''
import torch
from torch import nn

def build(input_shape, n_outputs):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, n_outputs))

def raising_build(input_shape, n_outputs):
    raise ValueError("channels must be even")

def list_build(input_shape, n_outputs):
    return [nn.Linear(64, n_outputs)]

def load():
    from sklearn.datasets import load_digits
    d = load_digits()
    return d.images.reshape(len(d.images), -1), d.target

def wrong_load():
    return {"x": 1}

def vector_loss(outputs, targets):
    return torch.nn.functional.cross_entropy(outputs, targets, reduction="none")

def text_metric(y_true, y_pred):
    return "good"

CONSTANT = 3
'''


def _bad(tmp_path: Path, module: str = "usercode", **sections: dict) -> Path:
    """An experiment beside a module of user code, named `module` (a new name per test: Python caches imports)."""
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(BAD_CODE))
    base = {"data": {"name": "usercode:load"}, "model": {"name": "usercode:build"}, "train": {"epochs": 1}}
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    import tomli_w

    text = tomli_w.dumps(base).replace("usercode:", f"{module}:").replace("'usercode", f"'{module}")
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return path


BAD_CASES = {
    "no module": ({"model": {"name": "no_such_module:build"}},
                  "model.name = 'no_such_module:build': no module named 'no_such_module' in "),
    "no attribute": ({"model": {"name": "usercode:biuld"}}, "model.name = 'usercode:biuld': "),
    "not callable": ({"model": {"name": "usercode:CONSTANT"}}, "model.name = 'usercode:CONSTANT': CONSTANT is a int"),
    "not an import path": ({"model": {"name": "usercode:"}}, "model.name = 'usercode:': not an import path"),
    "factory raises": ({"model": {"name": "usercode:raising_build"}},
                       "model.name = 'usercode:raising_build': raising_build(...) raised ValueError: channels must be even"),
    "wrong model type": ({"model": {"name": "usercode:list_build"}},
                         "model.name = 'usercode:list_build': returned a list, not a torch nn.Module"),
    "wrong data type": ({"data": {"name": "usercode:wrong_load"}},
                        "data.name = 'usercode:wrong_load': returned a dict; expected arrays (x, y)"),
    "loss not a scalar": ({"loss": {"name": "usercode:vector_loss"}},
                          "loss.name = 'usercode:vector_loss': returned Tensor of shape"),
    "metric not a number": ({"metrics": {"extra": ["usercode:text_metric"]}},
                            "metrics.extra[0] = 'usercode:text_metric': returned a str, not a number"),
    "metric named as a built-in": ({"metrics": {"extra": ["usercode:build"]}}, None),
    "args for a built-in model": ({"model": {"name": "mlp", "args": {"width": 3}}},
                                  "model.args: only for a model of your own"),
}


@pytest.mark.parametrize("case", list(BAD_CASES), ids=list(BAD_CASES))
def test_bad_user_code_is_a_clear_error_that_writes_nothing(case: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from dltune.cli import main

    sections, message = BAD_CASES[case]
    module = f"usercode_{list(BAD_CASES).index(case)}"
    if case == "metric named as a built-in":
        (tmp_path / "accuracy_mod.py").write_text("def accuracy(y_true, y_pred):\n    return 1.0\n")
        sections, message = {"metrics": {"extra": ["accuracy_mod:accuracy"]}}, "the name 'accuracy' is taken"
    path = _bad(tmp_path, module, **sections)
    assert main(["train", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message.replace("'usercode", f"'{module}").replace("usercode:", f"{module}:") in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written


def test_debug_shows_the_users_own_traceback_wherever_it_is_on_the_line(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = _bad(tmp_path, "usercode_debug", model={"name": "usercode:raising_build"})
    r = run_main(capsys, "train", str(path), "--out", str(tmp_path / "out"), "--debug", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" in r.stderr and 'raise ValueError("channels must be even")' in r.stderr
    assert "dltune train: error: model.name = 'usercode_debug:raising_build'" in r.stderr


def test_the_module_is_found_beside_the_experiment_file_first(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = _bad(tmp_path, "usercode_beside")  # a name no other test imports: found beside the file or nowhere
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = run_main(capsys, "train", str(path), "--out", str(tmp_path / "out"), "--json", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["parameters"] == 64 * 10 + 10


# --- the same from Python ----------------------------------------------------------------------------------------

def _digits() -> tuple:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images[:600].astype("float32"), d.target[:600]


def _small_cnn(input_shape: tuple[int, ...], n_outputs: int, width: int = 8) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(input_shape[0], width, 3, padding=1), torch.nn.BatchNorm2d(width),
                               torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(width, n_outputs))


PY = {"model": {"args": {"width": 8}}, "train": {"epochs": 2}, "batch": {"size": 64},
      "search": {"trials": 3, "pruner": "none", "space": {"optim.lr": {"low": 1e-3, "high": 1e-2, "log": True}}},
      "ablation": {"seeds": 1, "variants": {"wider": {"model.args.width": 16}}}}


def test_objects_from_python_go_where_names_would(tmp_path: Path) -> None:
    from dltune import ablate, batch_find, lr_find, tune

    calls: list[dict] = []

    def factory(input_shape: tuple[int, ...], n_outputs: int, **args: int) -> torch.nn.Module:
        calls.append(args)
        return _small_cnn(input_shape, n_outputs, **args)

    result = train(load_config(PY), model=factory, data=_digits())
    assert result.status == "completed" and calls == [{"width": 8}] and result.data["input_shape"] == [1, 8, 8]
    searched = tune(load_config(PY), out_dir=tmp_path / "search", model=factory, data=_digits())
    assert sum(t.state == "COMPLETE" for t in searched.trials) == 3 and len(calls) == 1 + 1 + 3  # + the preflight
    ablated = ablate(load_config(PY), out_dir=tmp_path / "ablation", model=factory, data=_digits())
    assert {r.variant for r in ablated.results} == {"baseline", "wider"} and {"width": 16} in calls
    assert lr_find(load_config(PY), steps=10, model=factory, data=_digits()).lrs
    assert batch_find(load_config(PY), sizes=[16, 32], steps=2, model=factory, data=_digits()).chosen in (16, 32)


def test_a_module_given_to_a_search_is_copied_for_each_trial_and_left_as_it_was(tmp_path: Path) -> None:
    from dltune import tune

    torch.manual_seed(0)
    module = _small_cnn((1, 8, 8), 10)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    searched = tune(load_config(PY), out_dir=tmp_path / "search", model=module, data=_digits())
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())  # the caller's module: untouched
    from safetensors.torch import load_file

    trained = [load_file(Path(t.run_dir) / "model.safetensors") for t in searched.trials]
    first = next(k for k in before if k.endswith("weight"))
    # every trial started from the module's own weights and trained its own copy away from them
    assert all(not torch.equal(w[first], before[first]) for w in trained)
    assert not torch.equal(trained[0][first], trained[1][first])


def test_a_loader_may_return_a_dataset_and_a_loss_may_be_a_module_class(tmp_path: Path) -> None:
    (tmp_path / "dataset_loader.py").write_text(textwrap.dedent('''
        import torch
        from sklearn.datasets import load_digits
        from torch.utils.data import TensorDataset

        def load(n=400):
            d = load_digits()
            return TensorDataset(torch.tensor(d.images[:n, None], dtype=torch.float32), torch.tensor(d.target[:n]))
    '''))
    config = load_config({"data": {"name": "dataset_loader:load", "args": {"n": 400}},
                          "model": {"name": "cnn", "channels": [4], "head": [16]},
                          "loss": {"name": "torch.nn:CrossEntropyLoss", "args": {"label_smoothing": 0.1}},
                          "code": {"paths": [str(tmp_path)]}, "train": {"epochs": 2}})
    result = train(config)
    assert result.status == "completed" and result.data["source"] == "data.name = 'dataset_loader:load' (a torch Dataset)"
    assert result.data["sizes"] == {"train": 288, "val": 32, "test": 80}  # split by the [data] fractions
    # the module class was made with loss.args: a smoothed loss is never 0, even on a perfect prediction
    from dltune.run.assembly import setup

    loss_fn = setup(config).loss_fn
    logits = torch.tensor([[100.0, 0.0]])
    assert loss_fn(logits, torch.tensor([0])).item() > 0.01
