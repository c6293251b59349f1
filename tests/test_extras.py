"""dltune installs beside the user's torch, with its optional packages in extras: pyproject.toml declares a torch floor
and no pin (constraints.txt pins what is tested), and a command that needs a missing extra exits 2 with the line that
installs it, before it writes anything. A missing package is simulated in this process: a module set to None in
sys.modules is one that import and find_spec do not find."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ROOT, run_main
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import dltune
from dltune.errors import MissingExtra
from dltune.imports import need_extra

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
EXTRAS = PROJECT["optional-dependencies"]
OPTIONAL = ("compress", "postgres", "tracking", "ray")  # what `all` installs
DONE_RUN = ROOT / "tests" / "fixtures" / "format-2026-12" / "done"
SEED = str(ROOT / "examples" / "seed_mnist.toml")
POSTGRES_URL = "postgresql://dltune:secret@127.0.0.1:1/studies"  # never reached: the driver is missing first


def _pinned() -> dict[str, str]:
    """constraints.txt: name -> the pinned version."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_the_dependencies_pin_nothing_and_take_the_users_torch() -> None:
    requirements = [Requirement(r) for r in PROJECT["dependencies"]]
    extras = [Requirement(r) for e in EXTRAS.values() for r in e]
    assert [str(r) for r in [*requirements, *extras] if any(s.operator in ("==", "===") for s in r.specifier)] == []
    torch = next(r for r in requirements if r.name == "torch")
    assert torch.specifier.contains("2.5.1") and torch.specifier.contains("2.13.0") and torch.specifier.contains("2.4")
    assert not torch.specifier.contains("2.3.1")  # torch.distributed.pipelining came in 2.4


def test_the_optional_packages_are_extras_and_all_installs_them() -> None:
    core = {canonicalize_name(Requirement(r).name) for r in PROJECT["dependencies"]}
    assert {canonicalize_name(Requirement(r).name) for r in EXTRAS["compress"]} == {
        "torch-pruning", "onnx", "onnxscript", "onnxruntime"}
    assert [Requirement(r).name for r in EXTRAS["postgres"]] == ["psycopg"]
    for extra in OPTIONAL:
        assert not core & {canonicalize_name(Requirement(r).name) for r in EXTRAS[extra]}, extra
    assert {"test", "lint"} <= set(EXTRAS)
    every = [Requirement(r) for r in EXTRAS["all"]]
    assert {e for r in every if r.name == PROJECT["name"] for e in r.extras} == set(OPTIONAL)


def test_constraints_pin_every_requirement_that_make_installs() -> None:
    pins = _pinned()
    assert pins["torch"] == "2.13.0"
    named = [Requirement(r) for r in [*PROJECT["dependencies"], *(r for e in EXTRAS.values() for r in e)]]
    unpinned = sorted({r.name for r in named if r.name != PROJECT["name"] and canonicalize_name(r.name) not in pins})
    assert unpinned == []
    outside = [f"{r.name}=={pins[canonicalize_name(r.name)]}" for r in named if r.name != PROJECT["name"]
               and not r.specifier.contains(pins[canonicalize_name(r.name)])]
    assert outside == [], "constraints.txt pins a release that pyproject.toml's range leaves out"


def test_need_extra_names_what_is_missing_and_the_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    need_extra("compress", "json", "tomllib", who="present")  # installed: nothing raised
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    with pytest.raises(MissingExtra) as caught:
        need_extra("compress", "json", "torch_pruning", "no_such_module.sub", who="compress: torch-pruning")
    message = str(caught.value)
    assert message.startswith("compress: torch-pruning is not installed in this Python environment")
    assert "torch_pruning, no_such_module.sub" in message and sys.executable in message and "json," not in message
    assert message.endswith("; install it with: pip install 'dltune[compress]'")


def _onnx_folder(tmp_path: Path) -> Path:
    """A folder that `dltune predict` takes for a compressed ONNX model (its model.onnx is never read here)."""
    folder = tmp_path / "int8"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"not read")
    (folder / "metrics.json").write_text('{"runtime": "onnxruntime", "data": {"task": "classification"}}')
    return folder


def _run_copy(tmp_path: Path) -> Path:
    shutil.copytree(DONE_RUN, tmp_path / "run")
    return tmp_path / "run"


# (extra, the module made missing, the command line, what the command would have written)
Case = tuple[str, str, Callable[[Path], list[str]], Callable[[Path], Path]]
CASES: dict[str, Case] = {
    "compress": ("compress", "torch_pruning", lambda t: ["compress", str(_run_copy(t))],
                 lambda t: t / "run-compressed"),
    "compress-out": ("compress", "onnxruntime", lambda t: ["compress", str(_run_copy(t)), "--out", str(t / "c")],
                     lambda t: t / "c"),
    "tune-compressed": ("compress", "onnxscript", lambda t: ["tune", str(ROOT / "examples" / "tune_mnist.toml"),
                                                             "--set", 'search.objectives=["compressed.accuracy"]',
                                                             "--set", "search.pruner='none'", "--out", str(t / "s")],
                        lambda t: t / "s"),  # refused before the search trains any trial
    "predict-onnx": ("compress", "onnxruntime", lambda t: ["predict", str(_onnx_folder(t)), "--input", "x.npz"],
                     lambda t: t / "x-predictions.csv"),
    "train-mlflow": ("tracking", "mlflow", lambda t: ["train", SEED, "--set", "tracking.mlflow=true", "--out",
                                                      str(t / "run")], lambda t: t / "run"),
    "train-auto-mlflow": ("tracking", "mlflow", lambda t: ["train", SEED, "--auto", "lr", "--set",
                                                           "tracking.mlflow=true", "--out", str(t / "run")],
                          lambda t: t / "run"),  # said before the finder trains
    "train-tensorboard": ("tracking", "tensorboard", lambda t: ["train", SEED, "--set",
                                                                f"tracking.tensorboard='{t / 'tb'}'", "--out",
                                                                str(t / "run")], lambda t: t / "run"),
    "ablate-tensorboard": ("tracking", "tensorboard", lambda t: ["ablate", SEED, "--set",
                                                                 f"tracking.tensorboard='{t / 'tb'}'", "--out",
                                                                 str(t / "a")], lambda t: t / "a"),
    "worker-postgres": ("postgres", "psycopg", lambda t: ["worker", "--storage", POSTGRES_URL, "--study", "s",
                                                          "--out", str(t / "w")], lambda t: t / "w"),
    "tune-postgres": ("postgres", "psycopg", lambda t: ["tune", str(ROOT / "examples" / "tune_mnist.toml"),
                                                        "--storage", POSTGRES_URL, "--out", str(t / "s")],
                      lambda t: t / "s"),
    "ablate-postgres": ("postgres", "psycopg", lambda t: ["ablate", SEED, "--storage", POSTGRES_URL, "--out",
                                                          str(t / "a")], lambda t: t / "a"),
    "tune-ray": ("ray", "ray", lambda t: ["tune", SEED, "--backend", "ray", "--out", str(t / "s")],
                 lambda t: t / "s"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_command_without_its_extra_exits_2_with_the_pip_line_and_writes_nothing(
        case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    extra, module, command, written = CASES[case]
    monkeypatch.setitem(sys.modules, module, None)
    args = command(tmp_path)
    r = run_main(capsys, *args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dltune {args[0]}: error: "), r.stderr
    assert lines[0].endswith(f"pip install 'dltune[{extra}]'") and f"no module named {module}" in lines[0]
    assert "secret" not in r.stderr  # a storage URL's password stays masked
    assert not written(tmp_path).exists()
    assert r.stdout == ""


def test_the_version_is_the_installed_distributions(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    assert dltune.__version__ == importlib.metadata.version("dltune") == PROJECT["version"]

    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.delitem(dltune.__dict__, "__version__")  # read again, from no metadata
    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert dltune.__version__ == "unknown"


def test_import_dltune_on_windows_says_where_it_runs() -> None:
    code = "import sys; sys.platform = 'win32'\ntry:\n    import dltune\nexcept ImportError as e:\n    print(e)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("dltune runs on Linux and macOS (it locks files with fcntl)")
