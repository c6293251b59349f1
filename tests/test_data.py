from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from dltune import train
from dltune.cli import main
from dltune.data import DATASETS, load_data
from dltune.errors import DataError
from dltune.experiment.config import load_config
from dltune.experiment.sections import DataConfig


def dataset_config(name: str, mnist_dir: Path, real_mnist_test: Path, table_files: dict[str, Path]) -> DataConfig:
    """A small config for every registered dataset, with the files it needs."""
    extra = {
        "mnist": {"dir": str(mnist_dir), "limit": 1200},
        "fashion-mnist": {"dir": str(mnist_dir), "limit": 1200},
        "idx": {"images": str(real_mnist_test / "t10k-images-idx3-ubyte.gz"),
                "labels": str(real_mnist_test / "t10k-labels-idx1-ubyte.gz"), "limit": 1000},
        "csv": {"path": str(table_files["csv"]), "target": "label"},
        "npz": {"path": str(table_files["npz"])},
        "mnist-5k": {"limit": 1000},
    }.get(name, {})
    return DataConfig(name=name, **extra)


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_trains(name: str, mnist_dir: Path, real_mnist_test: Path,
                              table_files: dict[str, Path]) -> None:
    cfg = dataset_config(name, mnist_dir, real_mnist_test, table_files)
    result = train(load_config({"data": cfg.model_dump(exclude_none=True), "train": {"epochs": 1},
                                "model": {"hidden": [32]}}))
    assert result.status == "completed"
    sizes = result.data["sizes"]
    assert sizes["train"] > 0 and sizes["val"] > 0 and sizes["test"] > 0
    expected = {"classification": {"accuracy", "macro_f1"}, "binary": {"accuracy", "macro_f1", "roc_auc"},
                "regression": {"mse", "mae", "r2"}}[result.data["task"]]
    assert expected <= set(result.test)
    assert all(np.isfinite(v) for v in result.test.values())


def test_splits_are_stratified_seeded_and_normalized_on_train() -> None:
    s = load_data(DataConfig(name="mnist-5k"))
    assert s.info["sizes"] == {"train": 3600, "val": 400, "test": 1000}
    assert np.bincount(s.test[1].numpy()).tolist() == [100] * 10  # 500 per class in all
    assert np.bincount(s.val[1].numpy()).tolist() == [40] * 10
    assert s.train[0].dtype == torch.float32 and s.train[0].shape[1:] == (1, 28, 28)
    assert abs(s.train[0].mean().item()) < 1e-4 and abs(s.train[0].std().item() - 1) < 1e-3
    again, other = load_data(DataConfig(name="mnist-5k")), load_data(DataConfig(name="mnist-5k", seed=1))
    assert torch.equal(again.test[0], s.test[0])
    assert not torch.equal(other.test[0], s.test[0])


def test_mnist_5k_is_cached(data_home: Path) -> None:
    load_data(DataConfig(name="mnist-5k"))
    assert list(data_home.glob("mnist-5k-*.npz"))


def test_regression_metrics_are_in_original_units() -> None:
    s = load_data(DataConfig(name="diabetes"))
    assert s.task == "regression" and s.n_outputs == 1
    mean, std = s.target_scale
    assert 100 < mean < 200 and 50 < std < 100  # disease progression is 25..346


def test_official_test_split_is_kept(mnist_dir: Path) -> None:
    s = load_data(DataConfig(name="mnist", dir=str(mnist_dir)))
    assert s.info["sizes"] == {"train": 1800, "val": 200, "test": 10000}


def test_missing_files_without_download_say_what_to_put_where(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        load_data(DataConfig(name="fashion-mnist", dir=str(tmp_path), download=False))
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and "t10k-labels-idx1-ubyte.gz" in msg
    assert str(tmp_path / "fashion-mnist") in msg and "data.download = false" in msg


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server standing in for a public mirror: (base URL, folder it serves)."""
    root = tmp_path / "mirror"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", root
    server.shutdown()


def test_download_checks_md5_and_tries_the_next_mirror(mirror: tuple[str, Path], mnist_dir: Path,
                                                       real_mnist_test: Path, tmp_path: Path) -> None:
    url, served = mirror
    for f in real_mnist_test.glob("t10k-*.gz"):
        shutil.copy(f, served / f.name)
    data = tmp_path / "data"
    (data / "mnist").mkdir(parents=True)
    for f in (mnist_dir / "mnist").glob("train-*"):  # train files present; the test files are fetched
        shutil.copy(f, data / "mnist" / f.name)
    dead = url + "missing/"  # answers 404 first
    s = load_data(DataConfig(name="mnist", dir=str(data), mirrors=(dead, url)))
    assert s.info["sizes"]["test"] == 10000
    assert sorted(p.name for p in (data / "mnist").iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte"]


def test_download_with_wrong_md5_keeps_nothing(mirror: tuple[str, Path], real_mnist_test: Path,
                                               tmp_path: Path) -> None:
    url, served = mirror
    shutil.copy(real_mnist_test / "t10k-images-idx3-ubyte.gz", served / "t10k-images-idx3-ubyte.gz")
    (served / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not the labels")
    with pytest.raises(DataError) as e:
        load_data(DataConfig(name="mnist", dir=str(tmp_path), mirrors=(url,)))
    assert "t10k-labels-idx1-ubyte.gz: MD5" in str(e.value) and "expected ec29112dd5afa0611ce80d1b7f02629c" in str(e.value)
    assert not (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()
    assert not list((tmp_path / "mnist").glob(".*part"))


def test_idx_count_mismatch_names_both_files(real_mnist_test: Path, tmp_path: Path) -> None:
    from dltune.data import read_idx, write_idx

    labels = write_idx(tmp_path / "labels.idx", read_idx(real_mnist_test / "t10k-labels-idx1-ubyte.gz")[:999])
    images = real_mnist_test / "t10k-images-idx3-ubyte.gz"
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz has 10000 images but .*labels.idx has 999 labels"):
        load_data(DataConfig(name="idx", images=str(images), labels=str(labels)))


@pytest.mark.parametrize(("content", "target", "expected"), [
    ("a,b,y\n1,2,0\n3,,1\n", "y", r"table.csv: column 'b' has a missing or NaN value \(row 3\)"),
    ("a,b,y\n1,2,0\n3,nan,1\n", "y", r"table.csv: column 'b' has a missing or NaN value \(row 3\)"),
    ("a,b,y\n1,2,0\n3,four,1\n", "y", r"table.csv: column 'b' is not numeric \(row 3: 'four'\)"),
    ("a,b,y\n1,2,0\n3,4,1\n", "label", r"table.csv: no target column 'label'; columns: a, b, y"),
])
def test_bad_csv_names_the_file(tmp_path: Path, content: str, target: str, expected: str) -> None:
    path = tmp_path / "table.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=expected):
        load_data(DataConfig(name="csv", path=str(path), target=target))


def test_csv_text_labels_and_regression(table_files: dict[str, Path]) -> None:
    s = load_data(DataConfig(name="csv", path=str(table_files["csv"]), target="value"))
    assert s.task == "regression" and s.input_shape == (5,)  # the label column is a feature here
    binary = load_data(DataConfig(name="csv", path=str(table_files["csv"]), target="label"))
    assert binary.task == "binary" and binary.n_outputs == 2


def test_bad_data_from_the_cli_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "examples/seed_mnist.toml", "--set", "data.name=csv", "--set",
                 f"data.path={tmp_path / 'absent.csv'}", "--set", "data.target=y", "--out", str(tmp_path / "run")])
    assert code == 2
    assert f"{tmp_path / 'absent.csv'}: no such file" in capsys.readouterr().err


def test_npz_missing_array(tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    np.savez(path, inputs=np.zeros((4, 2)), y=np.zeros(4))
    with pytest.raises(DataError, match="a.npz: no array 'x'; arrays: inputs, y"):
        load_data(DataConfig(name="npz", path=str(path)))


def test_failed_run_leaves_no_run_folder(tmp_path: Path) -> None:
    assert main(["train", "examples/seed_mnist.toml", "--set", "data.name=idx", "--set",
                 f"data.images={tmp_path / 'x'}", "--set", f"data.labels={tmp_path / 'y'}",
                 "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()


def test_git_revision_is_one_git_call_and_says_dirty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from dltune.run.environment import git_revision

    run = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    assert git_revision(tmp_path) is None  # no commit yet
    (tmp_path / "f.txt").write_text("a")
    run("add", "f.txt")
    run("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "first")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    calls: list[list[str]] = []
    real = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda args, **kw: calls.append(args) or real(args, **kw))
    assert git_revision(tmp_path) == head and len(calls) == 1
    (tmp_path / "f.txt").write_text("b")
    assert git_revision(tmp_path) == head + "+dirty"
    (tmp_path / "new.txt").write_text("untracked files do not count")
    (tmp_path / "f.txt").write_text("a")
    assert git_revision(tmp_path) == head
