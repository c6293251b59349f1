"""The example experiments that ship with dltune (the package dltune.examples: the repository's examples/ folder,
setup.py): listed by name, and copied out to run and edit.

An example is a file, NAME.toml, or a folder, NAME/, that holds experiment files beside a package of the user's own
code (examples/own_model). Only what the wheel ships is listed and copied: .toml and .py files, never caches.
"""

from __future__ import annotations

import difflib
import importlib.resources
import os
import shutil
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path

from dltune.errors import ConfigError
from dltune.files import create_text

__all__ = ["Example", "copy_example", "examples"]

PACKAGE = "dltune.examples"
SHIPPED = (".toml", ".py")  # what pyproject.toml's package data and setup.py's packages put in the wheel
SUMMARY_CHARS = 100


@dataclass(frozen=True)
class Example:
    """One shipped example: its name, whether it is a folder, and what its opening comment says it is."""

    name: str
    folder: bool
    summary: str


def examples() -> list[Example]:
    """Every shipped example, by name."""
    return [Example(name, entry.is_dir(), _summary(entry)) for name, entry in sorted(_entries().items())]


def copy_example(name: str, dest: str | Path | None = None) -> Path:
    """Copy the example `name` to `dest` and return where it went: by default ./NAME.toml, or ./NAME/ for a folder;
    into `dest` when that is a folder that exists or a name that ends in "/". A file or folder already there is
    refused, never overwritten (each file is created exclusively, whole or not at all; a folder copied in part is
    removed)."""
    entries = _entries()
    key = name.removesuffix("/").removesuffix(".toml")
    if key not in entries:
        close = [n for n in sorted(entries) if n.startswith(key)] or difflib.get_close_matches(key, list(entries), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"NAME {name!r}: no such example{hint}; examples: {', '.join(sorted(entries))}")
    entry = entries[key]
    target = Path(key if entry.is_dir() else f"{key}.toml")
    if dest is not None:  # a folder (one that exists, or a name that ends in /) gets the example inside it
        target = Path(dest) / target if Path(dest).is_dir() or str(dest).endswith(("/", os.sep)) else Path(dest)
    if target.exists() or target.is_symlink():
        raise ConfigError(f"DEST {target}: exists; nothing was copied (choose another name, or remove it)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if entry.is_file():
            create_text(target, entry.read_text(encoding="utf-8"))
            return target
        target.mkdir()  # exclusive: a folder that another process made meanwhile is refused too
        try:
            _copy_folder(entry, target)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)  # whole or not at all
            raise
    except FileExistsError:
        raise ConfigError(f"DEST {target}: exists; nothing was copied (choose another name, or remove it)") from None
    except OSError as e:
        raise ConfigError(f"DEST {target}: cannot write there ({e.strerror or e})") from None
    return target


def _entries() -> dict[str, Traversable]:
    """The examples by name: NAME.toml files and folders that hold an experiment file."""
    found: dict[str, Traversable] = {}
    for entry in importlib.resources.files(PACKAGE).iterdir():
        if entry.is_file() and entry.name.endswith(".toml"):
            found[entry.name.removesuffix(".toml")] = entry
        elif entry.is_dir() and _shipped(entry.name) and any(f.name.endswith(".toml") for f in entry.iterdir()):
            found[entry.name] = entry
    return found


def _shipped(name: str) -> bool:
    return not name.startswith((".", "_"))  # not __pycache__, not a dotfile


def _copy_folder(source: Traversable, target: Path) -> None:
    """The shipped files of `source`, and of its folders, into the new folder `target`."""
    for entry in source.iterdir():
        if entry.is_dir() and _shipped(entry.name):
            (target / entry.name).mkdir()
            _copy_folder(entry, target / entry.name)
        elif entry.is_file() and entry.name.endswith(SHIPPED):
            create_text(target / entry.name, entry.read_text(encoding="utf-8"))


def _summary(entry: Traversable) -> str:
    """The example's opening comment, its first sentence (cut at SUMMARY_CHARS): the file's, or for a folder its
    NAME.toml's (else its first experiment file's)."""
    if entry.is_dir():
        tomls = sorted((f for f in entry.iterdir() if f.name.endswith(".toml")), key=lambda f: f.name)
        entry = next((f for f in tomls if f.name == f"{entry.name}.toml"), tomls[0])
    words: list[str] = []
    for line in entry.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        words.append(line.lstrip("#").strip())
    text = " ".join(words)
    end = text.find(". ")
    text = text[: end + 1] if end >= 0 else text
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1].rstrip() + "…"
