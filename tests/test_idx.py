from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from dltune.data import read_idx, write_idx
from dltune.data.download import md5sum
from dltune.errors import DataError


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_round_trip_every_type(tmp_path: Path, dtype: type, name: str) -> None:
    array = (np.arange(2 * 3 * 4) - 7).astype(dtype).reshape(2, 3, 4)
    path = write_idx(tmp_path / name, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    got = read_idx(path)
    assert got.dtype == np.dtype(dtype) and got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, array)


def test_header_is_the_documented_layout(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "labels", np.array([7, 2, 1], dtype=np.uint8))
    assert path.read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1])


def test_real_mnist_test_files(real_mnist_test: Path) -> None:
    images_gz = real_mnist_test / "t10k-images-idx3-ubyte.gz"
    labels_gz = real_mnist_test / "t10k-labels-idx1-ubyte.gz"
    assert md5sum(images_gz) == "9fb629c4189551a2d022fa330f9573f3"
    assert md5sum(labels_gz) == "ec29112dd5afa0611ce80d1b7f02629c"
    images, labels = read_idx(images_gz), read_idx(labels_gz)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8 and labels.shape == (10000,)
    # Known facts of the MNIST test set: its first labels, and 980 zeros ... 1,009 nines.
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert images.max() == 255 and images.min() == 0


def test_bad_magic_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "images.idx"
    bad.write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(DataError, match=r"images.idx: not an IDX file \(magic number 12340801"):
        read_idx(bad)


def test_truncated_file_names_the_file(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "t.idx", np.zeros((10, 4, 4), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"t.idx: truncated: 171 bytes, the header \[10, 4, 4\] needs 176"):
        read_idx(path)
    gz = tmp_path / "t.idx.gz"
    gz.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 100)[:-10])
    with pytest.raises(DataError, match="t.idx.gz: broken gzip stream"):
        read_idx(gz)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.idx: no such file"):
        read_idx(tmp_path / "nope.idx")
