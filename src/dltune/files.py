"""Folders and files that are never overwritten by accident: claimed atomically, written by rename.

Two processes started in the same second must not share a run folder, and a reader (or a process killed
mid-write) must never see half a file. A folder is claimed by `mkdir` without `exist_ok` (the kernel lets
one caller win), a file by `O_CREAT | O_EXCL`; on a clash the next suffix is tried (`name-2`, `name-3`,
...). Contents are written to a temporary name in the same folder and renamed over the target, which
POSIX makes atomic. Every file is created as `open` creates one, with mode 0o666 less the user's umask
(a private umask keeps the outputs private, a shared one lets a group write them).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dltune.errors import ConfigError, WriteError

__all__ = ["atomic_write", "claim_dir", "claim_file", "create_text", "folder_lock", "folder_locked", "new_output",
           "temp_file", "write_bytes", "write_text"]

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
                       lambda path: os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)), "file")


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
    fd, tmp = _temp_beside(path)
    mode = stat.S_IMODE(os.fstat(fd).st_mode)  # what the umask left
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode)  # a writer that replaced the file keeps that mode (safetensors' save_file makes it 0o600)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        _refused(path, e)
        raise


def create_text(path: str | Path, text: str) -> Path:
    """Create `path` holding `text` (UTF-8) if no file has that name, else raise FileExistsError: exclusive as
    O_EXCL and atomic as a rename. It is written under a temporary name and linked into place, so that another
    process, or one killed mid-way, sees no file or the whole of it, never an empty one."""
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.link(tmp, path)
    except OSError as e:
        _refused(path, e)
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path


# what the disk says when a file cannot grow: full, over a quota or a size limit (RLIMIT_FSIZE), read-only, failing
_DISK_FAULTS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)


def _temp_beside(path: Path) -> tuple[int, Path]:
    """A temporary file beside `path` (temp_file); a folder that refuses one is a WriteError naming `path`."""
    try:
        return temp_file(path.parent, f".{path.name}.", ".tmp")
    except OSError as e:
        raise WriteError(f"{path}: cannot write: {e.strerror or e}") from e


def _refused(path: Path, error: BaseException) -> None:
    """Raise a WriteError naming `path` when `error` says that the disk refused the write."""
    reason = _disk_fault(error)
    if reason is not None:
        raise WriteError(f"{path}: cannot write: {reason}") from error


def _disk_fault(error: BaseException) -> str | None:
    """The reason, when `error` says that the disk refused a write: an OSError, or a Rust library's error
    (safetensors) that quotes one as "... (os error 28)"."""
    if isinstance(error, OSError):
        code = error.errno
    else:
        found = re.search(r"\(os error (\d+)\)", str(error))
        code = int(found.group(1)) if found else None
    return os.strerror(code) if code in _DISK_FAULTS else None


def temp_file(folder: str | Path, prefix: str, suffix: str) -> tuple[int, Path]:
    """A new file with a random name in `folder`, open for writing (the descriptor, and the path). Unlike
    `tempfile.mkstemp`, which makes every file 0o600, it gets the mode the umask leaves, as `open` gives, so that
    renaming it into place gives the file the permissions the user asked for; the kernel applies the umask, which
    is never read (reading it means setting it, a race with the process's other threads)."""
    for _ in range(100):
        path = Path(folder) / f"{prefix}{secrets.token_hex(8)}{suffix}"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: no free temporary name {prefix}...{suffix} in 100 tries")


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
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
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


def folder_locked(folder: str | Path) -> bool:
    """Whether a process holds `folder`'s lock (folder_lock) now. A lock file that no process holds was left by one
    that ended, however it ended."""
    try:
        fd = os.open(Path(folder) / ".lock", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases a lock taken here
    return False


def _parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{path.parent}: cannot create the folder ({e.strerror})") from None


@contextmanager
def new_output(default: Path, out_dir: str | Path | None, mark: str, what: str, noun: str) -> Iterator[Path]:
    """The output folder of a command that writes a folder of results (compress, ensemble): `default` claimed
    (-2, -3, ... when taken), or `out_dir`, which must be new or empty. It is held under `what`'s lock for the block
    (a second command into the same folder is refused; one that holds another `noun`, its `mark` file, too), and
    whatever the block wrote is removed if it raises (the
    folder too, when it was created here): a failed command leaves the folder as it found it."""
    if out_dir is None:
        out, fresh = claim_dir(default), True
    else:
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out}: not a folder")
        fresh = not out.exists()
        if not fresh:
            _refuse_taken(out, mark, noun)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--out {out}: cannot write there ({e.strerror})") from None
    try:
        with folder_lock(out, what):
            _refuse_taken(out, mark, noun)  # again, now that no other such command can be writing there
            try:
                yield out
            except BaseException:
                for path in out.iterdir():  # the folder held nothing before: leave it so
                    if path.name != ".lock":
                        shutil.rmtree(path) if path.is_dir() else path.unlink()
                raise
    except BaseException:
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _refuse_taken(out: Path, mark: str, noun: str) -> None:
    """A folder that holds another result (its `mark` file), or anything but a lock file, is refused."""
    if (out / mark).exists():
        raise ConfigError(f"--out {out}: holds another {noun} ({mark}); choose another folder")
    if any(p.name != ".lock" for p in out.iterdir()):
        raise ConfigError(f"--out {out}: not an empty folder")
