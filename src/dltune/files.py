"""Folders and files that are never overwritten by accident: claimed atomically, written by rename.

Two processes started in the same second must not share a run folder, and a reader (or a process killed
mid-write) must never see half a file. A folder is claimed by `mkdir` without `exist_ok` (the kernel lets
one caller win), a file by `O_CREAT | O_EXCL`; on a clash the next suffix is tried (`name-2`, `name-3`,
...). Contents are written to a temporary name in the same folder and renamed over the target, which
POSIX makes atomic.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dltune.errors import ConfigError

__all__ = ["atomic_write", "claim_dir", "claim_file", "folder_lock", "write_bytes", "write_text"]

MAX_SUFFIX = 10_000


def claim_dir(base: str | Path) -> Path:
    """Create and return a new, empty folder: `base`, or `base-2`, `base-3`, ... if taken (by a folder or a
    file); never one that another process created first. The parent folders are created as needed."""
    base = Path(base)
    return _first_free(base, lambda n: base.with_name(f"{base.name}-{n}"), Path.mkdir, "folder")


def claim_file(base: str | Path) -> Path:
    """Create and return a new, empty file: `base`, or `stem-2.suffix`, ... if taken; the caller then
    replaces its contents (write_bytes / write_text), so no other process can have chosen the same name."""
    base = Path(base)
    return _first_free(base, lambda n: base.with_name(f"{base.stem}-{n}{base.suffix}"),
                       lambda path: os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)), "file")


def _first_free(base: Path, named: Callable[[int], Path], create: Callable[[Path], object], what: str) -> Path:
    """The first of base, named(2), named(3), ... that `create` makes (it raises FileExistsError when taken)."""
    _parent(base)
    for n in range(1, MAX_SUFFIX + 1):
        path = base if n == 1 else named(n)
        try:
            create(path)
        except FileExistsError:
            continue
        except OSError as e:
            raise ConfigError(f"{path}: cannot create the {what} ({e.strerror})") from None
        return path
    raise ConfigError(f"{base}: {MAX_SUFFIX} {what}s of that name exist; clean up or choose another name")


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed over `path` when the block ends without an
    error, removed when it raises. Readers see the old file or the whole new one, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (temporary name, then rename)."""
    return _write(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` in UTF-8, atomically (temporary name, then rename)."""
    return _write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _write(path: str | Path, fill: Callable[[Path], object]) -> Path:
    path = Path(path)
    with atomic_write(path) as tmp:
        fill(tmp)
    return path


@contextmanager
def folder_lock(folder: str | Path, what: str) -> Iterator[None]:
    """Hold `folder`/.lock (an advisory lock, `flock`) for the block, so that a second `what` on the same
    folder is refused with the first one's pid instead of writing into it too. The kernel releases the
    lock when the process ends, however it ends: a killed run never leaves the folder locked."""
    path = Path(folder) / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ConfigError(f"{folder}: another {what} is running in this folder (pid {holder}); wait for "
                              "it to end, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{path.parent}: cannot create the folder ({e.strerror})") from None
