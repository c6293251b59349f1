"""Pydantic's validation errors of an experiment, said as dltune says them: the dotted path, then what is wrong."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

__all__ = ["describe"]


def describe(err: Mapping[str, Any], root: type[BaseModel]) -> tuple[str, str]:
    """(dotted path, message) of one pydantic error of the model `root`; an unknown key lists the allowed ones."""
    # pydantic names the alternatives of a union in the location ("literal['none','balanced']"): not a key; an
    # unknown key is the user's own, whatever its characters ("my-section", "a.b" or "" are shown quoted)
    last = len(err["loc"]) - 1
    loc = tuple(p for i, p in enumerate(err["loc"]) if isinstance(p, int) or p.isidentifier()
                or (i == last and err["type"] == "extra_forbidden"))
    path = "".join(_step(p) for p in loc).lstrip(".") or "(top level)"
    if err["type"] == "extra_forbidden":
        return path, f"unknown key; allowed: {', '.join(_allowed_keys(root, loc[:-1]))}"
    msg = err["msg"].removeprefix("Value error, ")
    shown = err.get("input")
    got = "" if isinstance(shown, dict) or err["type"] == "value_error" else f" (got {shown!r})"
    return path, f"{msg}{got}"


def _step(part: str | int) -> str:
    if isinstance(part, int):
        return f"[{part}]"
    return f".{part}" if part.isidentifier() else f".{json.dumps(part)}"  # one line, whatever its characters


def _allowed_keys(root: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    model = root
    for part in loc:
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return [info.alias or name for name, info in model.model_fields.items()]  # transfer.from_ is "from"
