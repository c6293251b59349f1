"""The wheel as a user gets it, outside the checkout: built from the working tree, installed with no extra into a fresh
virtual environment, it prints its version, copies a shipped example, trains it on the embedded data, and refuses a
command whose extra is missing with the line that installs it. And pip's resolver, given the wheel in an environment
that holds another torch, keeps that torch when it is new enough (torch>=2.4) and replaces it when it is not.

Both need pip to reach the package indexes (PyPI, and the local ones pip.conf names): the resolver reads the
metadata of dltune's other dependencies there. `-rP` prints what each command printed and how long it took."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT
from packaging.version import Version

pytestmark = pytest.mark.slow

BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "src", "examples")  # what setuptools reads
PIP = ("-m", "pip", "--disable-pip-version-check")


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
         ) -> subprocess.CompletedProcess[str]:
    """Run a command and print it, its exit code, its time and what it printed (the test's transcript)."""
    started = time.monotonic()
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    print(f"$ {' '.join(Path(str(a)).name if i == 0 else str(a) for i, a in enumerate(args))}"
          f"    # exit {r.returncode}, {time.monotonic() - started:.1f} s")
    for stream in (r.stdout, r.stderr):
        lines = [line for line in stream.splitlines() if "is ignored: it is neither a file nor a directory" not in line]
        for line in lines[-12:]:  # the end: pip's and a training's output are long
            print(f"  {line}")
    return r


def _venv(folder: Path) -> Path:
    """A fresh virtual environment with pip (the base interpreter's: not this test's .venv)."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=300)
    print(f"# a fresh venv in {folder}: {time.monotonic() - started:.1f} s")
    return folder / "bin" / "python"


def _env(venv: Path) -> dict[str, str]:
    """This environment as a user's shell in `venv` has it: its bin/ first, nothing of the checkout's .venv. Byte
    code may be written (the install skipped compiling it), so that the second import of torch is not slower."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONDONTWRITEBYTECODE")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dltune's wheel, built from a copy of the working tree's build inputs (setuptools writes build/ and egg-info
    beside its sources; in the checkout a stale build/ would go into the wheel)."""
    tree = tmp_path_factory.mktemp("tree")
    for name in BUILD_INPUTS:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
        else:
            shutil.copy2(source, tree / name)
    out = tmp_path_factory.mktemp("wheels")
    r = _run(sys.executable, *PIP, "wheel", "--no-deps", "--quiet", "-w", out, tree, cwd=out)
    assert r.returncode == 0, r.stderr
    [built] = out.glob("dltune-*.whl")
    names = zipfile.ZipFile(built).namelist()
    assert "dltune/examples/seed_mnist.toml" in names and "dltune/report/templates/base.html" in names
    return built


def test_the_wheel_installs_alone_and_runs_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    python = _venv(tmp_path / "venv")
    env = _env(tmp_path / "venv")
    dltune = tmp_path / "venv" / "bin" / "dltune"
    work = tmp_path / "work"  # the user's folder: not the checkout, which holds a dltune/ of its own
    work.mkdir()
    started = time.monotonic()
    # the core only, at the tested releases; --no-compile: no byte code for torch's 10,000 files up front
    r = _run(python, *PIP, "install", "--quiet", "--no-compile", "-c", ROOT / "constraints.txt", wheel,
             cwd=work, env=env)
    assert r.returncode == 0, r.stderr
    print(f"# installed the wheel and its core dependencies: {time.monotonic() - started:.1f} s")

    r = _run(dltune, "--version", cwd=work, env=env)
    assert r.returncode == 0 and r.stdout == "dltune 0.1.0\n", r.stderr
    where = ("import dltune, importlib.util; print(dltune.__version__, dltune.__file__); "
             "print('extras found:', [m for m in ('torch_pruning', 'onnx', 'onnxruntime', 'psycopg', 'mlflow', "
             "'tensorboard', 'ray') if importlib.util.find_spec(m)])")
    r = _run(python, "-c", where, cwd=work, env=env)
    assert r.returncode == 0, r.stderr
    assert str(tmp_path / "venv") in r.stdout and "extras found: []" in r.stdout

    r = _run(dltune, "example", "seed_mnist", "exp.toml", cwd=work, env=env)
    assert r.returncode == 0 and r.stdout == "copied to exp.toml\n", r.stderr
    assert (work / "exp.toml").read_bytes() == (ROOT / "examples" / "seed_mnist.toml").read_bytes()

    r = _run(dltune, "train", "exp.toml", "--set", "train.epochs=1", "--set", "parallel.threads=1", "--out", "run",
             cwd=work, env=env)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["test"]["accuracy"] > 0.8  # mnist-5k, one epoch

    r = _run(dltune, "compress", "run", cwd=work, env=env)
    assert r.returncode == 2
    assert r.stderr.startswith("dltune compress: error: dltune's compress extra (torch-pruning, ONNX and onnxruntime) "
                               "is not installed in this Python environment")
    assert r.stderr.strip().endswith("pip install 'dltune[compress]'") and len(r.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in work.iterdir()) == ["exp.toml", "run"]  # no run-compressed/


def _fake_torch(folder: Path, version: str) -> Path:
    """A wheel named torch that holds its metadata and an empty package: all that pip sees of an installed torch."""
    info = f"torch-{version}.dist-info"
    files = {"torch/__init__.py": b"",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: dltune-tests\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n"}

    def digest(data: bytes) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    record = "".join(f"{name},sha256={digest(data)},{len(data)}\n" for name, data in files.items())
    path = folder / f"torch-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr(f"{info}/RECORD", record + f"{info}/RECORD,,\n")
    return path


def _would_install(python: Path, wheel: Path, report: Path, cwd: Path, env: dict[str, str]) -> dict[str, str]:
    """What `pip install WHEEL` would install, as a user's pip resolves it (no constraints file): name -> version."""
    started = time.monotonic()
    r = _run(python, *PIP, "install", "--dry-run", "--quiet", "--report", report, wheel, cwd=cwd, env=env)
    assert r.returncode == 0, r.stderr
    print(f"# the dry run resolved dltune's dependencies in {time.monotonic() - started:.1f} s")
    planned = {item["metadata"]["name"].lower(): item["metadata"]["version"]
               for item in json.loads(report.read_text())["install"]}
    print(f"  would install {len(planned)} packages: {', '.join(f'{n}=={v}' for n, v in sorted(planned.items()))}")
    return planned


def _installed_torch(python: Path, cwd: Path, env: dict[str, str]) -> str:
    r = _run(python, "-c", "import importlib.metadata as m; print(m.version('torch'))", cwd=cwd, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_pip_keeps_the_users_torch_when_it_is_new_enough(wheel: Path, tmp_path: Path) -> None:
    python = _venv(tmp_path / "venv")
    env = _env(tmp_path / "venv")
    for version in ("2.6.0", "2.3.0"):
        fake = _fake_torch(tmp_path, version)
        r = _run(python, *PIP, "install", "--quiet", "--no-index", "--no-deps", fake, cwd=tmp_path, env=env)
        assert r.returncode == 0, r.stderr
        assert _installed_torch(python, tmp_path, env) == version
        planned = _would_install(python, wheel, tmp_path / f"report-{version}.json", tmp_path, env)
        assert "dltune" in planned and "numpy" in planned  # it resolved the whole core
        if version == "2.6.0":  # the user's torch stays: nothing replaces it
            assert "torch" not in planned
            assert _installed_torch(python, tmp_path, env) == "2.6.0"
        else:  # below the floor: pip replaces it with a torch that dltune's APIs are in
            assert Version(planned["torch"]) >= Version("2.4")
