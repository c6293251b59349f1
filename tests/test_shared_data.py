"""The tests that need the real MNIST test files find them as CI does, say how to provide them when they are
missing, and fail rather than skip under CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MNIST_TEST_FILES, ROOT, find_shared_mnist


def shared(base: Path) -> Path:
    folder = base / "shared" / "data" / "mnist"
    folder.mkdir(parents=True)
    for name in MNIST_TEST_FILES:
        (folder / name).write_bytes(b"")
    return folder


def test_shared_data_is_found_beside_or_above_the_checkout(tmp_path: Path) -> None:
    checkout = tmp_path / "work" / "main"
    checkout.mkdir(parents=True)
    assert find_shared_mnist(checkout, {})[0] is None
    above = shared(tmp_path)
    assert find_shared_mnist(checkout, {}) == (above, str(above))
    beside = shared(tmp_path / "work")  # the nearest one wins
    assert find_shared_mnist(checkout, {})[0] == beside
    assert find_shared_mnist(checkout, {"DLTUNE_SHARED": str(tmp_path / "shared")})[0] == above


def test_dltune_shared_names_the_only_place_looked_at(tmp_path: Path) -> None:
    shared(tmp_path / "elsewhere")
    folder, where = find_shared_mnist(tmp_path / "elsewhere", {"DLTUNE_SHARED": str(tmp_path / "empty")})
    assert folder is None and where == f"{tmp_path / 'empty' / 'data' / 'mnist'} ($DLTUNE_SHARED)"


@pytest.mark.parametrize("ci", ["", "true"])
def test_missing_files_skip_with_advice_but_fail_in_ci(tmp_path: Path, ci: str) -> None:
    env = {**os.environ, "DLTUNE_SHARED": str(tmp_path), "CI": ci}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                        "tests/test_idx.py::test_real_mnist_test_files"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    out = " ".join(r.stdout.split())
    assert "DLTUNE_SHARED" in out and "shared/data/mnist beside the checkout" in out
    if ci:
        assert r.returncode != 0 and "1 error" in out and "must not be skipped" in out
    else:
        assert r.returncode == 0 and "1 skipped" in out
