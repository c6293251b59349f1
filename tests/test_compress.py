"""dltune compress: every method and chain on the MLP, the CNN and a model of your own; ONNX checked against torch;
a pruned model that reloads without torch-pruning; distillation from train and tune; and bad input that changes
nothing."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import ROOT, run_cli
from dltune import load_config, train
from dltune.cli import main
from dltune.run.assembly import saved_model, splits_for
from dltune.compression import compress

TINY = {"data": {"name": "digits", "limit": 600}, "model": {"hidden": [64]}, "train": {"epochs": 3},
        "optim": {"lr": 3e-3}, "compress": {"rounds": 3, "batch_sizes": [1, 64]}}
CNN = {**TINY, "model": {"name": "cnn", "channels": [8, 16], "head": [32]}}


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mlp") / "run"
    train(load_config(TINY), out_dir=out)
    return out


def _fingerprint(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _onnx_matches_torch(folder: Path, x: torch.Tensor, tolerance: float) -> None:
    """The folder's model.onnx against its model.safetensors, reloaded by dltune as a user would."""
    splits = splits_for(load_config(folder / "config.toml"))
    model = saved_model(folder, splits)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(session.run(None, {"x": x.numpy()})[0] - expected).max() <= tolerance


def test_every_method_on_the_mlp_from_the_cli(mlp_run: Path, tmp_path: Path) -> None:
    before = _fingerprint(mlp_run)
    out = tmp_path / "c"
    done = run_cli("compress", str(mlp_run), "--out", str(out), "--json", "--seeds", "2", "--methods",
                   "onnx,int8,prune,magnitude,distill,prune+int8",
                   "--config", str(_config(tmp_path, {
                       **TINY, "compress": {**TINY["compress"], "distill": {"student": {"hidden": [16]}, "epochs": 2},
                                            "magnitude": {"ratio": 0.6}}})))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["original", "onnx", "int8", "prune", "magnitude", "distill", "prune+int8"]
    # what trains says so as it goes (stderr with --json): a line per seed and epoch
    lines = done.stderr.splitlines()
    for what, epochs in (("prune, seed 1: fine-tuning", 1), ("prune, seed 2: fine-tuning", 1),
                         ("distill, seed 1: the student", 2), ("distill, seed 2: the student", 2)):
        for epoch in range(1, epochs + 1):
            assert any(line.startswith(f"{what}, epoch {epoch}/{epochs}  train loss ") for line in lines), (what, lines)
    assert any(line.startswith("timing 7 models at batch sizes ") for line in lines), lines
    assert _fingerprint(mlp_run) == before  # the run folder is only read
    original = rows["original"]
    # ONNX fp32: the same model; int8: about a quarter of the bytes, the same predictions nearly
    assert rows["onnx"]["details"]["onnx_max_difference"] <= 1e-4 and rows["onnx"]["delta"] == 0
    # (a 64-64-10 MLP: the ONNX graph itself weighs; bench_compress measures the ratio on the reference MLP)
    assert rows["int8"]["size_bytes"] < original["size_bytes"] / 1.5 and abs(rows["int8"]["delta"]) < 3
    assert rows["int8"]["details"]["int8_mode"] == "dynamic"  # an MLP has no convolution
    # structured pruning: half the hidden units gone for real, fine-tuned over 2 seeds
    assert rows["prune"]["details"]["prune"]["shapes"]["1.weight"] == [32, 64]
    assert rows["prune"]["parameters"] < original["parameters"] * 0.55
    assert len(rows["prune"]["folders"]) == 2 and rows["prune"]["metric"]["n"] == 2
    assert rows["prune"]["metric"]["ci_low"] <= rows["prune"]["metric"]["mean"] <= rows["prune"]["metric"]["ci_high"]
    # magnitude: 60% of the hidden weights zero; smaller only as the sparse file
    zeros = rows["magnitude"]["details"]["magnitude"]["zeros"]
    assert zeros == pytest.approx(0.6 * 64 * 64, abs=2)
    folder = Path(rows["magnitude"]["folders"][0])
    assert rows["magnitude"]["size_bytes"] == (folder / "model.sparse.safetensors").stat().st_size
    assert (folder / "model.sparse.safetensors").stat().st_size < (folder / "model.safetensors").stat().st_size
    # distillation: a smaller student, its own config
    student = Path(rows["distill"]["folders"][0])
    assert load_config(student / "config.toml").model.hidden == (16,)
    assert rows["distill"]["parameters"] < original["parameters"] / 3
    for method in ("prune", "magnitude", "distill", "prune+int8"):
        for f in rows[method]["folders"]:
            assert {"config.toml", "metrics.json", "model.onnx", "row.md"} <= {p.name for p in Path(f).iterdir()}
    for method in ("prune", "distill", "magnitude"):
        x = splits_for(load_config(mlp_run / "config.toml")).test[0][:50]
        _onnx_matches_torch(Path(rows[method]["folders"][0]), x, 1e-4)
    for row in rows.values():
        assert set(row["latency"]) == {"1", "64"} and all(v["median_ms"] > 0 for v in row["latency"].values())
    assert Path(result["report"]).is_file() and Path(result["markdown"]).is_file()


def test_a_pruned_model_reloads_without_torch_pruning(mlp_run: Path, tmp_path: Path) -> None:
    result = compress(mlp_run, tmp_path / "c", methods=["prune"])
    folder = Path(result.rows[1].folders[0])
    code = (f"import sys; sys.modules['torch_pruning'] = None\n"
            f"from dltune import load_config\nfrom dltune.run.assembly import saved_model, splits_for\n"
            f"m = saved_model({str(folder)!r}, splits_for(load_config({str(folder / 'config.toml')!r})))\n"
            f"print(m[1].out_features, sum(p.numel() for p in m.parameters()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["32", str(result.rows[1].parameters)]
    # and a pruned run compresses again (its config.toml and weights are a run folder)
    again = compress(folder, tmp_path / "again", methods=["int8"])
    assert again.rows[0].parameters == result.rows[1].parameters


EVERY = ["onnx", "int8", "prune", "magnitude", "distill", "prune+int8"]


def _every_method_holds(result, original_parameters: int) -> None:
    rows = {r.method: r for r in result.rows}
    assert list(rows) == ["original", *EVERY]
    assert rows["onnx"].details["onnx_max_difference"] <= 1e-4 and rows["onnx"].delta == 0
    assert rows["prune"].parameters < original_parameters * 0.6
    assert rows["magnitude"].details["magnitude"]["zeros"] > 0
    assert rows["distill"].parameters < original_parameters
    assert rows["prune+int8"].runtime == "onnxruntime" and rows["prune+int8"].parameters == rows["prune"].parameters
    for row in result.rows[1:]:
        assert all(v["median_ms"] > 0 for v in row.latency.values())
        for folder in row.folders:
            assert (Path(folder) / "model.onnx").is_file() and (Path(folder) / "metrics.json").is_file()
    for method in ("prune", "magnitude", "distill"):  # torch's model and its ONNX export agree, reloaded
        folder = Path(rows[method].folders[0])
        _onnx_matches_torch(folder, splits_for(load_config(folder / "config.toml")).test[0][:20], 1e-4)


@pytest.mark.slow
def test_every_method_on_the_cnn_and_both_int8_kinds_measured(tmp_path: Path) -> None:
    train(load_config(CNN), out_dir=tmp_path / "run")
    distill = {**CNN, "compress": {**CNN["compress"], "distill": {"student": {"name": "mlp", "hidden": [16]},
                                                                   "epochs": 1}}}
    result = compress(tmp_path / "run", tmp_path / "c", methods=EVERY, config=_config(tmp_path, distill))
    _every_method_holds(result, result.rows[0].parameters)
    int8 = result.rows[2]
    assert set(int8.details["int8_choice"]) == {"dynamic", "static"}
    assert int8.details["int8_mode"] == min(int8.details["int8_choice"], key=int8.details["int8_choice"].get)
    assert result.rows[3].details["prune"]["shapes"]["0.0.weight"][0] == 4  # 8 channels -> 4


@pytest.mark.slow
def test_every_method_on_your_own_model(tmp_path: Path) -> None:
    experiment = ROOT / "examples" / "own_model" / "own_model.toml"
    train(load_config(experiment, {"train.epochs": 1, "data.args.limit": 400}), out_dir=tmp_path / "run")
    student = {"compress": {"rounds": 3, "batch_sizes": [1, 64],
                            "distill": {"student": {"name": "mlp", "hidden": [32]}, "epochs": 1}}}
    # from Python: the CLI (its own process, its report) is the MLP's test
    result = compress(tmp_path / "run", tmp_path / "c", methods=EVERY, config=_config(tmp_path, student))
    _every_method_holds(result, result.rows[0].parameters)


def test_distillation_from_train_and_as_a_search_space(mlp_run: Path, tmp_path: Path) -> None:
    from dltune import tune

    student = {**TINY, "model": {"hidden": [16]}, "loss": {"distill_from": str(mlp_run)}, "train": {"epochs": 2}}
    distilled = train(load_config(student))
    plain = train(load_config({**student, "loss": {}}))
    assert distilled.status == plain.status == "completed"
    assert distilled.epochs[0]["train"]["loss"] != plain.epochs[0]["train"]["loss"]  # another training loss
    search = {**student, "search": {"trials": 2, "pruner": "none", "space": {
        "loss.distill_temperature": {"low": 1.0, "high": 8.0}, "loss.distill_alpha": {"low": 0.1, "high": 0.9},
        "model.hidden": [[8], [16]]}}}
    result = tune(load_config(search), out_dir=tmp_path / "search")
    assert [t.state for t in result.trials] == ["COMPLETE", "COMPLETE"]
    assert all(0 < t.params["loss.distill_alpha"] < 1 for t in result.trials)


def _config(tmp_path: Path, experiment: dict) -> Path:
    import tomli_w

    path = tmp_path / "compress.toml"
    path.write_text(tomli_w.dumps(experiment))
    return path


@pytest.mark.parametrize(("setup", "message"), [
    ("no-weights", "has no model.safetensors"),
    ("ratio", "compress.prune.ratio"),
    ("method", "compress.methods[0] = 'prun': unknown method 'prun'"),
    ("order", "compress.methods[0] = 'int8+prune': onnx and int8 give an ONNX model"),
    ("student", "loss.distill_from: the teacher"),
    ("taken", "holds another compression"),
    ("untraceable", "compress.prune: torch-pruning removed nothing from this model"),
])
def test_bad_input_is_a_clear_error_that_changes_nothing(mlp_run: Path, tmp_path: Path, setup: str, message: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, out = mlp_run, tmp_path / "out"
    args: list[str] = []
    if setup == "no-weights":
        run_dir = tmp_path / "bare"
        run_dir.mkdir()
        (run_dir / "config.toml").write_text((mlp_run / "config.toml").read_text())
    elif setup == "ratio":
        args = ["--config", str(_config(tmp_path, {"compress": {"prune": {"ratio": 1.0}}}))]
    elif setup == "method":
        args = ["--methods", "prun"]
    elif setup == "order":
        args = ["--methods", "int8+prune"]
    elif setup == "student":  # a model of your own that predicts 3 classes where the teacher has 10
        (tmp_path / "three.py").write_text("import torch\ndef build(shape, n):\n"
                                           "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))\n")
        args = ["--methods", "distill", "--config", str(_config(tmp_path, {
            "code": {"paths": [str(tmp_path)]},
            "compress": {"distill": {"student": {"name": "three:build"}, "epochs": 1}}}))]
    elif setup == "untraceable":  # a model whose forward leaves autograd: nothing to follow from layer to layer
        (tmp_path / "weird.py").write_text(
            "import torch\n\nclass Weird(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
            "        self.a, self.b = torch.nn.Linear(64, 32), torch.nn.Linear(32, 10)\n\n"
            "    def forward(self, x):\n        h = torch.relu(self.a(x.flatten(1)))\n"
            "        return self.b(torch.from_numpy(h.detach().numpy().copy()))\n\n"
            "def build(shape, n):\n    return Weird()\n")
        run_dir = tmp_path / "weird-run"
        train(load_config({**TINY, "model": {"name": "weird:build"}, "code": {"paths": [str(tmp_path)]},
                           "train": {"epochs": 1}}), out_dir=run_dir)
        args = ["--methods", "prune"]
    elif setup == "taken":
        out.mkdir()
        (out / "compress.json").write_text("{}")
    before = _fingerprint(run_dir)
    taken_before = _fingerprint(out) if out.exists() else None
    code = main(["compress", str(run_dir), "--out", str(out), *args])  # in-process: as the CLI, faster
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err and err.startswith("dltune compress: error: ")
    assert _fingerprint(run_dir) == before
    assert (_fingerprint(out) if out.exists() else None) == taken_before


def test_a_search_on_compressed_accuracy_against_latency(tmp_path: Path) -> None:
    from dltune import tune

    search = {**TINY, "compress": {**TINY["compress"], "methods": ["prune+int8"],
                                   "prune": {"finetune_epochs": 1}},
              "search": {"trials": 2, "pruner": "none", "space": {"model.hidden": [[32], [128]]},
                         "objectives": ["compressed.accuracy", "compressed.latency_ms", "compressed.size_bytes"]}}
    result = tune(load_config(search), out_dir=tmp_path / "search")
    assert result.directions == ["maximize", "minimize", "minimize"]
    trials = [t for t in result.trials if t.state == "COMPLETE"]
    assert len(trials) == 2
    sizes = {}
    for t in trials:
        folder = tmp_path / "search" / "trials" / f"trial-{t.number}" / "compressed"
        stored = json.loads((folder / "metrics.json").read_text())
        assert t.values == [stored["compressed.accuracy"], stored["compressed.latency_ms"],
                            stored["compressed.size_bytes"]]
        assert (folder / "model.onnx").stat().st_size == stored["compressed.size_bytes"]
        sizes[t.params["model.hidden"][0]] = stored["compressed.size_bytes"]
    if len(sizes) == 2:  # the wider model is the bigger one, compressed too
        assert sizes[128] > sizes[32]
    # the search's best/ folder compresses as a run folder does, from the package's own name
    import dltune

    best = dltune.compress(tmp_path / "search" / "best", tmp_path / "best-c", methods=["onnx"])
    assert best.rows[1].details["onnx_max_difference"] <= 1e-4


def test_compressed_accuracy_needs_classes() -> None:
    from dltune.errors import ConfigError
    from dltune.study.studies import prepare

    regression = {"data": {"name": "diabetes"}, "search": {"objectives": ["compressed.accuracy"], "pruner": "none",
                                                           "space": {"optim.lr": {"low": 1e-4, "high": 1e-2}}}}
    with pytest.raises(ConfigError, match="compressed.accuracy needs a classification task"):
        prepare(load_config(regression))


def test_two_compressions_into_one_folder_at_once_leave_one_whole_result(mlp_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "shared"
    command = [sys.executable, "-m", "dltune", "compress", str(mlp_run), "--out", str(out), "--methods", "onnx",
               "--json"]
    procs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, _, err in results if code == 2)
    assert "another dltune compress is running" in loser or "holds another compression" in loser
    winner = json.loads(next(o for code, o, _ in results if code == 0))
    assert json.loads((out / "compress.json").read_text())["rows"] == winner["rows"]
    assert (out / "onnx" / "model.onnx").is_file()


def test_iterative_global_pruning_by_layer_kind(tmp_path: Path) -> None:
    deep = {**TINY, "model": {"hidden": [64, 32]}, "train": {"epochs": 2}}
    train(load_config(deep), out_dir=tmp_path / "run")
    settings = {"compress": {**TINY["compress"], "prune": {"linear": 0.5, "scope": "global", "steps": 2,
                                                            "finetune_epochs": 1}}}
    result = compress(tmp_path / "run", tmp_path / "c", methods=["prune"], config=_config(tmp_path, settings))
    pruned = result.rows[1].details["prune"]
    assert [s["step"] for s in pruned["steps"]] == [1, 2] and all(s["finetune_epochs"] == 1 for s in pruned["steps"])
    assert pruned["steps"][0]["parameters"] > pruned["steps"][1]["parameters"] == pruned["parameters_after"]
    hidden = pruned["shapes"]["1.weight"][0] + pruned["shapes"]["3.weight"][0]
    assert hidden == pytest.approx((64 + 32) / 2, abs=2)  # half of all hidden units, ranked across both layers
    assert pruned["shapes"]["5.weight"][0] == 10  # the output layer keeps its classes
