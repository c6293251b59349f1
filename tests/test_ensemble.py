"""dltune ensemble: every method from Python and the CLI, on a search and an ablation; answers known in advance
(identical members give the member back, a soup of one model is that model); the saved folder reloads without the
study and predicts what was measured; bad input changes nothing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, run_cli, run_main
from dltune import ablate, load_config
from dltune.run.assembly import saved_model, splits_for
from dltune.ensembles import METHODS, ensemble, load_ensemble, probabilities
from dltune.ensembles.combine import combine, fit
from dltune.study.tune import tune

TINY = {"data": {"name": "digits", "limit": 700}, "model": {"hidden": [24]}, "train": {"epochs": 3}}
SEARCH = {**TINY, "search": {"trials": 5, "pruner": "none", "sampler": "random",
                             "space": {"optim.lr": {"low": 1e-3, "high": 3e-2, "log": True}}}}


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("search") / "out"
    tune(load_config(SEARCH), out_dir=out)
    return out


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A search whose trials differ only in batch.eval_size, which changes no weight: identical members."""
    out = tmp_path_factory.mktemp("twins") / "out"
    space = {"batch.eval_size": [128, 256, 512]}
    tune(load_config({**TINY, "search": {"trials": 3, "pruner": "none", "sampler": "grid", "space": space}}),
         out_dir=out)
    return out


def _fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _test_split():
    return splits_for(load_config(TINY)).test


@pytest.mark.parametrize("method", METHODS)
def test_every_method_reloads_and_predicts_what_it_measured(search: Path, tmp_path: Path, method: str) -> None:
    before = _fingerprint(search)
    result = ensemble(search, tmp_path / "ens", top=4, method=method)
    assert _fingerprint(search) == before  # the search is only read
    assert len(result.members) == 4 and abs(sum(m["weight"] for m in result.members) - 1) < 1e-9
    values = [m["ranked_value"] for m in result.members]
    assert values == sorted(values, reverse=True)  # the top 4 by val.accuracy, best first
    assert [b["k"] for b in result.by_members] == [1, 2, 3, 4]
    assert result.difference["ci_low"] <= result.difference["difference"] <= result.difference["ci_high"]
    best = max(result.members, key=lambda m: (m["val"]["accuracy"], -m["val"]["log_loss"]))
    assert result.best_single["name"] == best["name"]
    # the folder alone (no study) gives the measured accuracy on the test split
    model, manifest = load_ensemble(tmp_path / "ens")
    assert manifest["method"] == method
    x, y = _test_split()
    with torch.no_grad():
        accuracy = (model(x).argmax(dim=1) == y).double().mean().item()
    assert accuracy == pytest.approx(result.test["accuracy"], abs=1e-9)
    assert (tmp_path / "ens" / "ensemble.json").is_file()


@pytest.mark.parametrize("method", METHODS)
def test_identical_members_give_the_member_back(twins: Path, tmp_path: Path, method: str) -> None:
    result = ensemble(twins, tmp_path / "ens", top=3, method=method)
    member = result.members[0]["test"]
    assert result.test["accuracy"] == member["accuracy"]
    assert result.difference["difference"] == 0.0
    if method != "vote":  # vote's probabilities are shares of the vote
        assert result.test["log_loss"] == pytest.approx(member["log_loss"], rel=1e-6)


def test_combining_identical_outputs_is_the_identity() -> None:
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=50)
    y = rng.integers(0, 4, size=50)
    stack = np.stack([p, p, p])
    for method in ("mean", "weighted", "greedy"):
        fitted = fit(method, stack, y)
        assert np.allclose(combine(stack, fitted.weights, method), p, atol=1e-12)
    assert (combine(stack, [1 / 3] * 3, "vote").argmax(axis=1) == p.argmax(axis=1)).all()


@pytest.mark.parametrize("method", ["uniform-soup", "greedy-soup"])
def test_a_soup_of_one_model_is_that_model(search: Path, tmp_path: Path, method: str) -> None:
    result = ensemble(search, tmp_path / "soup", top=1, method=method)
    from safetensors.torch import load_file

    member = Path(result.members[0]["run_dir"])
    theirs, ours = load_file(member / "model.safetensors"), load_file(tmp_path / "soup" / "model.safetensors")
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in theirs)
    assert result.test == result.members[0]["test"]
    x, _ = _test_split()
    with torch.no_grad():  # the soup's folder is a run folder: the run's readers take it as it is
        assert torch.equal(saved_model(tmp_path / "soup")(x), saved_model(member)(x))


def test_the_seeds_of_an_ablation_variant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    experiment = {**TINY, "ablation": {"seeds": 3, "variants": {"wide": {"model.hidden": [48]}}}}
    ablate(load_config(experiment), out_dir=tmp_path / "abl")
    result = ensemble(tmp_path / "abl", tmp_path / "ens", variant="wide", method="mean")
    assert [m["name"] for m in result.members] == ["wide/seed-1", "wide/seed-2", "wide/seed-3"]
    assert sorted(p.name for p in (tmp_path / "ens" / "members").iterdir()) == [
        "wide-seed-1", "wide-seed-2", "wide-seed-3"]
    # seeds start from different weights: no soup of them
    failed = run_main(capsys, "ensemble", str(tmp_path / "abl"), "--variant", "wide", "--method", "soup",
                      "--out", str(tmp_path / "soup"))
    assert failed.returncode == 2 and "did not start from the same weights" in failed.stderr
    assert "Traceback" not in failed.stderr and not (tmp_path / "soup").exists()


def test_cli_ensemble_then_predict_on_it_a_run_and_an_onnx_model(search: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    done = run_cli("ensemble", str(search), "--top", "3", "--out", str(tmp_path / "ens"), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["method"] == "greedy" and Path(result["report"]).is_file()
    x, y = _test_split()
    norm = json.loads((search / "best" / "metrics.json").read_text())["data"]["normalization"]
    raw = (x.numpy() * norm["std"][0] + norm["mean"][0]) / norm["scale"]  # back to digits' pixel values, 0 to 16
    np.savez(tmp_path / "x.npz", x=np.round(raw).reshape(len(raw), 8, 8))
    model, _ = load_ensemble(tmp_path / "ens")
    from dltune import compress, predict

    for folder, kind in [(tmp_path / "ens", "ensemble"), (search / "best", "run")]:
        out = tmp_path / f"{kind}.csv"
        if kind == "ensemble":  # the CLI's main once (its own process: the regression's test); the library for the rest
            done = run_main(capsys, "predict", str(folder), "--input", str(tmp_path / "x.npz"), "--output", str(out),
                            "--json")
            assert done.returncode == 0, done.stderr
            predicted = json.loads(done.stdout)
        else:
            predicted = predict(folder, tmp_path / "x.npz", out).to_dict()
        assert predicted["kind"] == kind and predicted["examples"] == len(y)
        labels = np.array([int(v) for v in predicted["labels"]])
        assert (labels == y.numpy()).mean() > 0.7  # ten classes; a small model trained for 3 epochs
        assert out.read_text().splitlines()[0] == "label," + ",".join(f"p_{c}" for c in range(10))
    with torch.no_grad():
        expected = model(x).argmax(dim=1).numpy()
    ensemble_labels = [int(line.split(",")[0]) for line in (tmp_path / "ensemble.csv").read_text().splitlines()[1:]]
    assert (np.array(ensemble_labels) == expected).mean() > 0.99  # the pixels went there and back in float32
    compress(search / "best", tmp_path / "c", methods=["onnx"])  # from Python: its CLI is tested in test_compress
    predicted = predict(tmp_path / "c" / "onnx", tmp_path / "x.npz", tmp_path / "onnx.npz")
    assert predicted.kind == "onnx"
    run_labels = [int(line.split(",")[0]) for line in (tmp_path / "run.csv").read_text().splitlines()[1:]]
    with np.load(tmp_path / "onnx.npz") as onnx:  # the ONNX export of the search's best run predicts as it does
        assert (onnx["labels"] == np.array(run_labels)).mean() > 0.99
        assert onnx["probabilities"].shape == (len(y), 10)


def test_predict_a_regression_from_csv(tmp_path: Path) -> None:
    from dltune import train

    experiment = {"data": {"name": "diabetes"}, "model": {"hidden": [16]}, "train": {"epochs": 3}}
    result = train(load_config(experiment), out_dir=tmp_path / "run")
    from sklearn.datasets import load_diabetes

    rows = load_diabetes().data[:7]
    (tmp_path / "x.csv").write_text("\n".join(",".join(f"{v:.8f}" for v in r) for r in rows) + "\n")
    done = run_cli("predict", str(tmp_path / "run"), "--input", str(tmp_path / "x.csv"), "--json",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    predicted = json.loads(done.stdout)
    assert predicted["output"] == "x-predictions.csv" and (tmp_path / "x-predictions.csv").is_file()
    net = saved_model(tmp_path / "run")
    info = json.loads((tmp_path / "run" / "metrics.json").read_text())["data"]
    norm, scale = info["normalization"], info["target_scale"]
    x = (rows.astype(np.float32) - np.array(norm["mean"], dtype=np.float32)) / np.array(norm["std"], dtype=np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).squeeze(1).double().numpy() * scale["std"] + scale["mean"]
    assert np.allclose(predicted["predictions"], expected, rtol=1e-5)
    assert result.status == "completed"


@pytest.mark.parametrize(("args", "message"), [
    (["--top", "9"], "--top 9: "),
    (["--method", "stack"], "--method stack: unknown"),
    (["--variant", "wide"], "is a search, not an ablation"),
])
def test_bad_ensemble_input_is_a_clear_error_that_writes_nothing(search: Path, tmp_path: Path, args: list[str],
                                                                 message: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    before = _fingerprint(search)
    if args[0] == "--top":  # from the CLI's main: exit 2, one line, no traceback
        done = run_main(capsys, "ensemble", str(search), *args, "--out", str(tmp_path / "ens"))
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    else:
        from dltune.errors import ConfigError

        with pytest.raises(ConfigError) as e:
            ensemble(search, tmp_path / "ens", **{args[0][2:]: args[1]})
        assert message in str(e.value)
    assert not (tmp_path / "ens").exists() and _fingerprint(search) == before


def test_members_of_different_class_counts_or_architectures_are_refused(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    space = {"data.name": ["digits", "breast-cancer"]}
    tune(load_config({**TINY, "data": {"name": "digits"}, "search": {"trials": 2, "pruner": "none",
                                                                      "sampler": "grid", "space": space}}),
         out_dir=tmp_path / "mixed")
    done = run_main(capsys, "ensemble", str(tmp_path / "mixed"), "--top", "2", "--out", str(tmp_path / "e1"))
    assert done.returncode == 2 and "members with different class counts" in done.stderr
    space = {"model.hidden": [[8], [16]]}
    tune(load_config({**TINY, "search": {"trials": 2, "pruner": "none", "sampler": "grid", "space": space}}),
         out_dir=tmp_path / "archs")
    from dltune.errors import ConfigError

    with pytest.raises(ConfigError, match=r"trial-\d and trial-\d are different architectures \(.1.bias. has shape"):
        ensemble(tmp_path / "archs", tmp_path / "e2", top=2, method="soup")
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e2").exists()


def test_predict_on_a_file_of_the_wrong_shape_writes_nothing(search: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 7, 7)))
    done = run_main(capsys, "predict", str(search / "best"), "--input", str(tmp_path / "bad.npz"), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "examples of shape (7, 7) (49 values each), where the model expects (1, 8, 8) (64 values each)" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz"]


def test_probabilities_of_one_logit_are_a_binary_pair() -> None:
    p = probabilities(torch.tensor([[0.0], [2.0]]), "binary")
    assert torch.allclose(p.sum(dim=1), torch.ones(2)) and p[0, 1] == 0.5


def test_an_ablation_of_your_own_model_ensembles_and_predicts(tmp_path: Path) -> None:
    own = load_config(ROOT / "examples" / "own_model" / "own_model.toml",
                      ["train.epochs=1", "ablation.variants={}", "data.args.limit=600"])
    ablate(own, out_dir=tmp_path / "abl")
    result = ensemble(tmp_path / "abl", tmp_path / "ens", variant="baseline", method="weighted")
    assert [m["name"] for m in result.members] == ["baseline/seed-1", "baseline/seed-2"]
    x = np.random.default_rng(0).integers(0, 17, size=(5, 8, 8))
    np.savez(tmp_path / "x.npz", x=x)
    from dltune import predict

    predicted = predict(tmp_path / "ens", tmp_path / "x.npz", tmp_path / "p.csv")
    assert predicted.kind == "ensemble" and predicted.probabilities.shape == (5, 10)
    assert np.allclose(predicted.probabilities.sum(axis=1), 1.0)


def test_a_second_ensemble_into_the_same_folder_is_refused_and_changes_nothing(search: Path, tmp_path: Path) -> None:
    from dltune.errors import ConfigError

    ensemble(search, tmp_path / "ens", top=2, method="mean")
    before = _fingerprint(tmp_path / "ens")
    with pytest.raises(ConfigError, match=r"--out .*ens: holds another ensemble \(ensemble.json\)"):
        ensemble(search, tmp_path / "ens", top=3, method="vote")
    assert _fingerprint(tmp_path / "ens") == before
    second = ensemble(search, top=2, method="mean")  # the default folder: SOURCE-ensemble, then -2
    third = ensemble(search, top=2, method="mean")
    assert (Path(second.out_dir).name, Path(third.out_dir).name) == ("out-ensemble", "out-ensemble-2")


def test_predict_reads_the_real_mnist_idx_images(real_mnist_test: Path, tmp_path: Path) -> None:
    from dltune import predict, train
    from dltune.data.idx import read_idx

    train(load_config({"data": {"name": "mnist-5k", "limit": 1500}, "model": {"hidden": [64]},
                       "train": {"epochs": 5}}), out_dir=tmp_path / "run")
    predicted = predict(tmp_path / "run", real_mnist_test / "t10k-images-idx3-ubyte.gz", tmp_path / "p.npz")
    labels = read_idx(real_mnist_test / "t10k-labels-idx1-ubyte.gz")
    assert predicted.examples == len(labels) == 10_000
    # 87% here: pixels 0-255 as the file holds them, normalized with the statistics of the training split
    assert (predicted.labels == labels).mean() > 0.8


def test_the_source_can_be_a_storage_url_and_a_study_name(search: Path, tmp_path: Path) -> None:
    result = ensemble(storage=f"sqlite:///{search / 'study.db'}", study="search", out_dir=tmp_path / "e", top=2,
                      method="mean")
    assert len(result.members) == 2 and result.source.startswith("sqlite:///")
    from dltune.errors import ConfigError

    with pytest.raises(ConfigError, match="--study other: .* holds no search or ablation of that name; its searches "
                                          "and ablations: search"):
        ensemble(storage=f"sqlite:///{search / 'study.db'}", study="other", out_dir=tmp_path / "f")
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize(("name", "write", "message"), [
    ("rows.csv", lambda p: p.write_text("\n".join([",".join(["3"] * 64)] * 2 + [",".join(["nan"] + ["3"] * 63)]) + "\n"),
     r"row 3 holds a value that is not finite \(nan, in column 1\)"),
    ("arrays.npz", lambda p: np.savez(p, x=np.where(np.arange(2 * 64).reshape(2, 8, 8) == 70, np.inf, 1.0)),
     r"the array 'x' holds 1 value that is not finite \(inf\); the first in example 2, at \(0, 6\)"),
])
def test_predict_refuses_inputs_that_are_not_finite(search: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    name: str, write, message: str) -> None:
    """NaN or inf in new examples would give label 0 with NaN probabilities, and --json bare NaN tokens."""
    write(tmp_path / name)
    done = run_main(capsys, "predict", str(search / "best"), "--input", str(tmp_path / name), "--json", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    import re

    assert re.search(message, done.stderr), done.stderr
    assert done.stdout == "" and sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing written


def test_predict_refuses_inputs_whose_outputs_overflow(search: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    np.savez(tmp_path / "huge.npz", x=np.stack([np.full((8, 8), 3.0), np.full((8, 8), 1e300)]))
    done = run_main(capsys, "predict", str(search / "best"), "--input", str(tmp_path / "huge.npz"), "--json",
                    cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "example 2 holds a value beyond float32's range, which the model computes in (its largest |value| is 1e+300)" in done.stderr
    assert done.stdout == "" and sorted(p.name for p in tmp_path.iterdir()) == ["huge.npz"]


def _project(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A search and an ablation made by the CLI in tmp_path/project with relative --out folders, as a user does."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "exp.toml").write_text(
        '[data]\nname = "digits"\nlimit = 500\n[model]\nhidden = [16]\n[train]\nepochs = 2\n'
        '[ablation]\nseeds = 2\n[ablation.variants]\nwide = { "model.hidden" = [24] }\n'
        '[search]\ntrials = 3\npruner = "none"\nsampler = "random"\n'
        '[search.space]\n"optim.lr" = { low = 1e-3, high = 1e-2, log = true }\n')
    for command in ("tune", "ablate"):
        done = run_main(capsys, command, "exp.toml", "--out", f"runs/{command}", cwd=project)
        assert done.returncode == 0, done.stderr
    return project


def test_recorded_run_folders_are_found_from_any_folder_and_after_a_move(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Each trial records its run folder relative to the study's output folder (and that folder): an ensemble
    finds its members from another working folder, by an absolute SOURCE, and after the folder moved."""
    import optuna

    project = _project(tmp_path, capsys)
    stored = optuna.load_study(study_name="exp", storage=f"sqlite:///{project / 'runs' / 'tune' / 'study.db'}")
    assert sorted(t.user_attrs["run_dir"] for t in stored.trials) == ["trials/trial-0", "trials/trial-1",
                                                                     "trials/trial-2"]
    assert {t.user_attrs["out_dir"] for t in stored.trials} == {str(project / "runs" / "tune")}
    (tmp_path / "elsewhere").mkdir()
    for n, (source, extra) in enumerate([("../project/runs/tune", ["--top", "2"]),
                                         (str(project / "runs" / "tune"), ["--top", "2"]),
                                         ("../project/runs/ablate", ["--variant", "wide"])]):
        done = run_main(capsys, "ensemble", source, *extra, "--method", "mean", "--out", f"e{n}", "--json",
                        cwd=tmp_path / "elsewhere")
        assert done.returncode == 0, (source, done.stderr)
    (project / "runs").rename(tmp_path / "moved")
    for n, (source, extra) in enumerate([("moved/tune", ["--top", "3"]), ("moved/ablate", ["--variant", "baseline"])]):
        done = run_main(capsys, "ensemble", source, *extra, "--method", "mean", "--out", f"m{n}", cwd=tmp_path)
        assert done.returncode == 0, (source, done.stderr)
    done = run_main(capsys, "report", "moved/ablate", cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_a_study_written_before_stays_readable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Trials that recorded their run folder relative to the working folder of the command that made them (dltune
    before 2026-12) are found from that folder, and inside the study's folder after it moved."""
    import sqlite3

    project = _project(tmp_path, capsys)
    for kind in ("tune", "ablate"):  # as the old code wrote them: --out runs/KIND, from the project's folder
        with sqlite3.connect(project / "runs" / kind / "study.db") as db:
            db.execute("UPDATE trial_user_attributes SET value_json = json_quote(? || json_extract(value_json, '$')) "
                       "WHERE key = 'run_dir'", (f"runs/{kind}/",))
            db.execute("DELETE FROM trial_user_attributes WHERE key = 'out_dir'")
    from dltune.study.records import run_folder

    assert run_folder({"run_dir": "runs/tune/trials/trial-0"}, None) == "runs/tune/trials/trial-0"
    done = run_main(capsys, "ensemble", "runs/tune", "--top", "2", "--out", "e1", cwd=project)
    assert done.returncode == 0, done.stderr
    (project / "runs").rename(tmp_path / "moved")
    for n, (source, extra) in enumerate([("moved/tune", ["--top", "2"]), ("moved/ablate", ["--variant", "wide"])]):
        done = run_main(capsys, "ensemble", source, *extra, "--method", "mean", "--out", f"m{n}", cwd=tmp_path)
        assert done.returncode == 0, (source, done.stderr)


def test_predict_on_a_compress_output_names_its_models_and_counts_labels(search: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from dltune import compress

    compress(search / "best", tmp_path / "c", methods=["onnx", "int8"])
    np.savez(tmp_path / "x.npz", x=np.full((3, 8, 8), 4.0))
    done = run_main(capsys, "predict", str(tmp_path / "c"), "--input", str(tmp_path / "x.npz"), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (f"MODEL_DIR {tmp_path / 'c'}: holds the models of dltune compress, one per folder; predict with one of "
            f"them, e.g. {tmp_path / 'c' / 'int8'} (its models: int8, onnx)") in done.stderr
    done = run_main(capsys, "predict", str(tmp_path / "c" / "int8"), "--input", str(tmp_path / "x.npz"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("examples per predicted label: "))
    counts = dict(part.split(": ") for part in line.removeprefix("examples per predicted label: ").split(", "))
    assert sum(int(v) for v in counts.values()) == 3
