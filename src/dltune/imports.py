"""Imports that can fail, each failure a clear error: user code named in an experiment file by import path,
`module:attribute` (the form of entry points), and the optional packages of dltune's extras (need_extra).

The user's module is looked for in the experiment's code folders first (`code.paths`: by default the experiment file's
own folder), then on sys.path. Importing it runs its code, as any Python import does. Every failure is an error
that names the key and the import path.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dltune.errors import ConfigError, MissingExtra, UserCodeError

__all__ = ["call", "import_paths_in", "install_line", "is_import_path", "load", "need_extra", "where"]

_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
_LOCK = threading.Lock()  # sys.path is process-wide: one import at a time changes it


def is_import_path(name: object) -> bool:
    """Whether a name in the experiment file is an import path ("my_models:build") rather than a built-in name."""
    return isinstance(name, str) and ":" in name


def import_paths_in(raw: Any, prefix: str = "") -> list[str]:
    """Every import path among the values of an experiment (as a dict), as "key = 'module:attr'"."""
    if isinstance(raw, dict):
        return [found for k, v in raw.items() for found in import_paths_in(v, f"{prefix}{k}.")]
    if isinstance(raw, (list, tuple)):
        return [found for v in raw for found in import_paths_in(v, prefix)]
    return [f"{prefix.rstrip('.')} = {raw!r}"] if isinstance(raw, str) and _PATH.match(raw) else []


def load(spec: str, key: str, folders: Sequence[str] = ()) -> Any:
    """The attribute that `spec` ("package.module:attr.sub") names, imported with `folders` searched first."""
    if not _PATH.match(spec):
        raise ConfigError(f"{key} = {spec!r}: not an import path; expected module:attribute, e.g. my_models:build")
    module_name, _, attribute = spec.partition(":")
    with _LOCK:
        added = [str(Path(f)) for f in folders if str(Path(f)) not in sys.path]
        sys.path[:0] = added
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and module_name.startswith(e.name):
                where = f"{', '.join(map(str, folders))} or on sys.path" if folders else "on sys.path"
                raise ConfigError(f"{key} = {spec!r}: no module named {e.name!r} in {where}") from None
            raise UserCodeError(f"{key} = {spec!r}: importing {module_name} failed: {_describe(e)}") from e
        except Exception as e:  # noqa: BLE001 - the user's module raised while it was imported
            raise UserCodeError(f"{key} = {spec!r}: importing {module_name} failed: {_describe(e)}") from e
        finally:
            for folder in added:
                sys.path.remove(folder)
    value: Any = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            public = sorted(n for n in dir(value) if not n.startswith("_"))[:12]
            raise ConfigError(f"{key} = {spec!r}: {getattr(module, '__file__', module_name)} has no attribute "
                              f"{attribute!r}; it has: {', '.join(public)}")
        value = getattr(value, part)
    if not callable(value):
        raise ConfigError(f"{key} = {spec!r}: {attribute} is a {type(value).__name__}, not something to call")
    return value


def call(fn: Callable[..., Any], where: str, *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs) for the user's code; what it raises becomes a UserCodeError that starts with `where`
    (the key and import path: "model.name = 'my_models:build'"), with the original exception as its cause."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - user code: any exception is reported with the key that named it
        raise UserCodeError(f"{where}: {getattr(fn, '__name__', type(fn).__name__)}(...) raised {_describe(e)}") from e


def where(key: str, spec: str | None, given: object = None) -> str:
    """How an error names the user's code: by its key and import path, or as the object given from Python."""
    if spec is not None and is_import_path(spec) and given is None:
        return f"{key} = {spec!r}"
    return f"{key.split('.')[0]} (the {getattr(given, '__name__', type(given).__name__)} given from Python)"


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def install_line(extra: str) -> str:
    """The command that installs one of dltune's extras: pip install 'dltune[compress]'."""
    return f"pip install 'dltune[{extra}]'"


def need_extra(extra: str, *modules: str, who: str) -> None:
    """Raise MissingExtra when one of `modules` (top-level names: torch_pruning, psycopg) is not installed: `who`
    (what needs them, as the user knows it: "--backend ray: Ray Tune") is not installed, and the line that installs
    dltune's `extra`. A command calls it before it writes or trains anything. find_spec imports none of them, so
    the check costs no start-up time."""
    missing = [name for name in modules if not _installed(name)]
    if missing:
        raise MissingExtra(f"{who} is not installed in this Python environment ({sys.executable}: no module named "
                           f"{', '.join(missing)}); install it with: {install_line(extra)}")


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None  # None too for a module set to None in sys.modules
    except ImportError:  # a parent package that is missing
        return False
    except ValueError:  # imported already, without a spec (__main__, a module made by hand)
        return True
