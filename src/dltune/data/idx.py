"""Reader and writer of the IDX format of MNIST and its relatives (gzip or raw)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from dltune.errors import DataError

__all__ = ["read_idx", "write_idx"]

# IDX type codes -> big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CODES = {np.dtype(v).newbyteorder("=").str: k for k, v in _DTYPES.items()}


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file; gzip is recognized by its magic bytes, not the name."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from None
    if blob[:2] == b"\x1f\x8b":
        try:
            blob = gzip.decompress(blob)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: broken gzip stream ({e}); the file is truncated or corrupt") from None
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] not in _DTYPES:
        raise DataError(
            f"{path}: not an IDX file (magic number {blob[:4].hex() or 'missing'}; "
            "expected 0000 then a type code 08/09/0b/0c/0d/0e and the number of dimensions)"
        )
    dtype = np.dtype(_DTYPES[blob[2]])
    ndim = blob[3]
    header = 4 + 4 * ndim
    if len(blob) < header:
        raise DataError(f"{path}: truncated IDX header ({len(blob)} bytes, need {header})")
    shape = struct.unpack(f">{ndim}I", blob[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(blob) != expected:
        what = "truncated" if len(blob) < expected else "longer than its header says"
        raise DataError(f"{path}: {what}: {len(blob)} bytes, the header {list(shape)} needs {expected}")
    return np.frombuffer(blob, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write `array` as IDX (gzip when `compress`, or when the name ends in .gz)."""
    path = Path(path)
    array = np.ascontiguousarray(array)
    code = _CODES.get(array.dtype.str)
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}; "
                         "use one of uint8, int8, int16, int32, float32, float64")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    blob = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        blob = gzip.compress(blob, mtime=0)
    path.write_bytes(blob)
    return path
