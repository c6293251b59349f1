"""Fetching data files from public mirrors, checked by MD5, written atomically."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from dltune.files import temp_file

__all__ = ["DownloadError", "fetch", "md5sum"]


class DownloadError(Exception):
    """No mirror delivered the file with the expected checksum; `.tries` says why, per URL."""

    def __init__(self, name: str, tries: list[str]) -> None:
        super().__init__(f"could not download {name}: " + "; ".join(tries))
        self.tries = tries


def md5sum(path: str | Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(name: str, mirrors: Sequence[str], dest: Path, md5: str, *, timeout: float = 30.0) -> Path:
    """Download `name` from the first mirror that serves it with the right MD5 into `dest`.

    The file appears at `dest` only when complete and verified (written to a temporary
    file, then renamed), so a failed or concurrent download never leaves a partial file.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tries = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + name
        fd, tmp = temp_file(dest.parent, f".{name}.", ".part")  # the umask's mode, not mkstemp's 0o600
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
            got = md5sum(tmp)
            if got != md5:
                tries.append(f"{url}: MD5 {got}, expected {md5}")
                continue
            os.replace(tmp, dest)
            return dest
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            tries.append(f"{url}: {getattr(e, 'reason', e)}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise DownloadError(name, tries)
