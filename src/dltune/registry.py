"""A generic name → object registry with "did you mean" errors."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

from dltune.errors import ConfigError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one kind (datasets, models, optimizers ...) looked up by short name.

    `get` passes non-strings through, so the Python API accepts the object itself
    wherever a config names an entry by string.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str, obj: T) -> T: ...

    def register(self, name: str, obj: T | None = None) -> T | Callable[[T], T]:
        if obj is not None:
            return self._add(name, obj)
        return lambda o: self._add(name, o)

    def _add(self, name: str, obj: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = obj
        return obj

    def get(self, name: str | T, *, path: str | None = None) -> T:
        """The entry called `name`; `path` (e.g. "model.name") prefixes the error."""
        if not isinstance(name, str):
            return name
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(self.unknown_message(name, path)) from None

    def unknown_message(self, name: str, path: str | None = None) -> str:
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        where = f"{path}: " if path else ""
        return f"{where}unknown {self.kind} {name!r}{hint}; known: {', '.join(self.names())}"

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
