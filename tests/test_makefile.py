"""The Makefile's install steps, as `make -n` shows them for a .venv that does not exist yet."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def planned(target: str, venv: Path) -> str:
    """What `make TARGET` would run with .venv at `venv` (missing: it would be created)."""
    r = subprocess.run(["make", "-n", target, f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_demo_installs_dltune_without_the_test_tools(tmp_path: Path) -> None:
    plan = planned("demo", tmp_path / "venv")
    assert "-m venv" in plan and "first time takes about a minute" in plan
    assert "pip install --quiet -c constraints.txt -e .\n" in plan
    assert "[test" not in plan and "optuna-dashboard" not in plan and "mlflow" not in plan and "ray" not in plan
    assert "onnx" not in plan and "psycopg" not in plan and "[all" not in plan  # the core only


def test_test_installs_the_test_tools(tmp_path: Path) -> None:
    plan = planned("test", tmp_path / "venv")
    assert "-m venv" in plan and "optuna-dashboard" in plan
    assert "pip install --quiet -c constraints.txt -e '.[test,lint,all]'" in plan and "mlflow" in plan
    assert "ruff" in plan and "mypy" in plan


def test_lint_installs_the_lint_tools_and_runs_ruff_and_mypy(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    plan = planned("lint", venv)
    assert "pip install --quiet -c constraints.txt -e '.[test,lint,all]'" in plan
    assert f"{venv}/bin/ruff check src\n" in plan and f"{venv}/bin/mypy\n" in plan
