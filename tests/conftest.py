"""Shared fixtures: a data folder per test session, the real MNIST test files, a CLI runner (a fresh process, or
the CLI's main() in this one)."""

from __future__ import annotations

import functools
import os
import shutil
import uuid
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch

from dltune.data import write_idx

ROOT = Path(__file__).resolve().parents[1]
MNIST_TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def find_shared_mnist(root: Path = ROOT, environ: Mapping[str, str] = os.environ) -> tuple[Path | None, str]:
    """The folder with the real MNIST test files, and where it was looked for: $DLTUNE_SHARED/data/mnist when
    that is set, else the first shared/data/mnist holding them in the checkout's folder or a folder above it."""
    if environ.get("DLTUNE_SHARED"):
        folder = Path(environ["DLTUNE_SHARED"]) / "data" / "mnist"
        return (folder if _holds_mnist(folder) else None), f"{folder} ($DLTUNE_SHARED)"
    for base in (root, *root.parents):
        folder = base / "shared" / "data" / "mnist"
        if _holds_mnist(folder):
            return folder, str(folder)
    return None, f"shared/data/mnist in {root} or any folder above it"


def _holds_mnist(folder: Path) -> bool:
    return all((folder / name).is_file() for name in MNIST_TEST_FILES)


# The tests train tiny models: one thread is fastest for them, and two threads of small ops slow
# down by orders of magnitude when another process (a DataLoader worker, a second job) holds a core.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def data_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """$DLTUNE_DATA points at a fresh folder: tests never read or write the user's cache."""
    home = tmp_path_factory.mktemp("dltune-data")
    os.environ["DLTUNE_DATA"] = str(home)
    return home


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


POSTGRES = os.environ.get("DLTUNE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def server_trials(name: str, states=None) -> list:
    """The trials of study `name` on the test PostgreSQL, read through one storage per test process. Each
    optuna.load_study(storage=URL) makes a new engine, whose pooled connections stay open until the garbage
    collector takes it (up to 21 here after 50 reads): a watcher that polled so ran the server out of connections
    in CI ("sorry, too many clients already")."""
    import optuna

    return optuna.load_study(study_name=name, storage=_server()).get_trials(states=states)


@functools.cache
def _server():
    import optuna

    return optuna.storages.RDBStorage(POSTGRES)


def drop_study(name: str, storage: str = POSTGRES) -> None:
    """Delete the study `name` and a search's pruning shadow of it (`name:pruning`) from `storage`, where there."""
    import optuna

    for study in (name, f"{name}:pruning"):
        try:
            optuna.delete_study(study_name=study, storage=storage)
        except KeyError:
            pass


@pytest.fixture
def pg_study() -> Iterator[str]:
    """A new study name in the test PostgreSQL database, deleted afterwards."""
    name = f"dltune-test-{uuid.uuid4().hex[:8]}"
    yield name
    drop_study(name)


@pytest.fixture(scope="session")
def real_mnist_test() -> Path:
    """The folder with the real MNIST t10k IDX files (gzip). Without them the tests that need them are skipped,
    except in CI (CI=true), where they fail: CI must run every test."""
    folder, where = find_shared_mnist()
    if folder is None:
        message = (f"the real MNIST test files ({', '.join(MNIST_TEST_FILES)}) are not in {where}; put them in "
                   "shared/data/mnist beside the checkout, or set DLTUNE_SHARED to a folder that holds data/mnist/")
        if in_ci():
            pytest.fail(f"{message} (CI is set: these tests must not be skipped)", pytrace=False)
        pytest.skip(message)
    return folder


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory, real_mnist_test: Path) -> Path:
    """A data folder with an mnist/ and a fashion-mnist/ subfolder: the real t10k files, and train
    files written from the first 2,000 real test images (the full train files cannot be fetched here)."""
    from dltune.data import read_idx

    base = tmp_path_factory.mktemp("idx-data")
    images = read_idx(real_mnist_test / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(real_mnist_test / "t10k-labels-idx1-ubyte.gz")
    for name in ("mnist", "fashion-mnist"):
        folder = base / name
        folder.mkdir()
        for kind in ("images-idx3", "labels-idx1"):
            shutil.copy(real_mnist_test / f"t10k-{kind}-ubyte.gz", folder / f"t10k-{kind}-ubyte.gz")
        write_idx(folder / "train-images-idx3-ubyte.gz", images[:2000])
        write_idx(folder / "train-labels-idx1-ubyte", labels[:2000])  # raw, not gzip: both are read
    return base


@pytest.fixture
def table_files(tmp_path: Path) -> dict[str, Path]:
    """A small CSV table and an .npz of images, with learnable targets."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    label = (x[:, 0] + x[:, 1] > 0).astype(int)
    csv = tmp_path / "table.csv"
    rows = ["a,b,c,d,label,value"] + [f"{a},{b},{c},{d},{k},{a * 2 - b:.4f}" for (a, b, c, d), k in zip(x, label)]
    csv.write_text("\n".join(rows) + "\n")
    images = rng.integers(0, 256, size=(120, 6, 6), dtype=np.uint8)
    npz = tmp_path / "arrays.npz"
    np.savez(npz, x=images, y=(images.mean(axis=(1, 2)) > 127).astype(np.int64))
    return {"csv": csv, "npz": npz}


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`dltune ARGS` in a fresh process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "dltune", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=os.environ.copy(), timeout=600)


def run_main(capsys: pytest.CaptureFixture[str], *args: str,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`dltune ARGS` through the CLI's own main() in this process: the parsing, output and exit codes of run_cli
    without a fresh process's start-up (its imports of torch and the rest take seconds). For a command whose run in a
    process of its own another test covers; `cwd` as run_cli's."""
    import contextlib

    from dltune.cli import main

    capsys.readouterr()  # what was printed before is not this command's
    with contextlib.chdir(cwd or ROOT):
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse's usage errors
            code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["dltune", *args], code, out, err)


def trials_in(db: Path, state: str) -> list[int]:
    """The numbers of a SQLite study's trials in `state`, read without writing: a watcher must not create the
    schema beside the process that does (optuna.load_study would), nor take a write lock from it."""
    import sqlite3

    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return [row[0] for row in con.execute("SELECT number FROM trials WHERE state = ?", (state,))]
    except sqlite3.OperationalError:  # no tables yet, or busy: look again later
        return []


# hypothesis (tests/test_fuzz.py): "default" is make test's, derandomized so that a CI run tries the same cases each
# time and a failure reproduces; "nightly" (make stress: HYPOTHESIS_PROFILE=nightly) tries 10x as many, new ones
# each run. Neither keeps a database in the checkout: a failure prints its falsifying example.
from hypothesis import HealthCheck, settings  # noqa: E402

_FUZZ_CHECKS = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile("default", max_examples=200, deadline=None, derandomize=True, database=None,
                          suppress_health_check=_FUZZ_CHECKS)
settings.register_profile("nightly", max_examples=2000, deadline=None, database=None, print_blob=True,
                          suppress_health_check=_FUZZ_CHECKS)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
