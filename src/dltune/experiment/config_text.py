"""The experiment as TOML for people: every section and key, with the keys left unset shown as comments."""

from __future__ import annotations

import re
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import tomli_w
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from dltune.experiment.config import ExperimentConfig

__all__ = ["annotated_toml", "type_hint"]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_BOUNDS = {annotated_types.Gt: (">", "gt"), annotated_types.Ge: (">=", "ge"), annotated_types.Lt: ("<", "lt"),
           annotated_types.Le: ("<=", "le")}


def annotated_toml(config: ExperimentConfig) -> str:
    """Every section of the experiment file (also [ablation] and [search] when unused) and every key: a key
    that is set as `key = value`, one left unset (TOML has no null) as `# key = ...  (not set; a number > 0)`.
    A section within a section ([compress.prune]) follows its parent's keys. tomllib reads the text back to the
    config's values, the unset keys absent."""
    return "\n\n".join(_section(name, getattr(config, name)) for name in type(config).model_fields) + "\n"


def _section(name: str, section: BaseModel) -> str:
    values = section.model_dump(mode="json")
    lines, tables = [f"[{name}]"], []
    for attribute, info in type(section).model_fields.items():
        value, key = getattr(section, attribute), info.alias or attribute  # transfer.from_ is "from" in a file
        if isinstance(value, BaseModel):  # a section of its own: [compress.prune]
            tables.append(_section(f"{name}.{_key(key)}", value))
        elif values[key] is None:
            lines.append(f"# {_key(key)} = ...  (not set; {type_hint(info)})")
        elif isinstance(values[key], dict):  # a table of its own, after the section's plain keys
            entries = [f"{_key(k)} = {_value(v)}" for k, v in values[key].items()] or ["# (none)"]
            tables.append("\n".join([f"[{name}.{_key(key)}]", *entries]))
        else:
            lines.append(f"{_key(key)} = {_value(values[key])}")
    return "\n\n".join(["\n".join(lines), *tables])


def type_hint(info: FieldInfo) -> str:
    """What a key takes, in words, from its annotation: "an integer > 0", "a number >= 0 and < 1", "a string"."""
    return _hint(info.annotation, list(info.metadata))


def _hint(annotation: Any, metadata: list[Any]) -> str:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(_hint(a, []) for a in get_args(annotation) if a is not type(None))
    if origin is Annotated:
        base, *extra = get_args(annotation)
        return _hint(base, metadata + [m for e in extra for m in (e.metadata if isinstance(e, FieldInfo) else [e])])
    if origin is Literal:
        return "one of " + ", ".join(_value(v) for v in get_args(annotation))
    if origin is tuple:
        items = get_args(annotation)
        if len(items) == 2 and items[1] is Ellipsis:
            return "a list of " + _many(_hint(items[0], []))
        return f"a list of {len(items)}: " + ", ".join(_hint(a, []) for a in items)
    if origin is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return "a table"
    bounds = " and ".join(f"{sign} {getattr(m, attr):g}" for m in metadata
                          for kind, (sign, attr) in _BOUNDS.items() if isinstance(m, kind))
    noun = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(annotation, "a value")
    return f"{noun} {bounds}".strip()


def _many(hint: str) -> str:
    """ "an integer > 0" -> "integers > 0"; "one of ..." -> "each one of ..." """
    if hint.startswith("one of "):
        return "values, each " + hint
    words = re.sub(r"^(a|an) ", "", hint).split(" ", 1)
    return " ".join([words[0] + "s", *words[1:]])


# tomli_w writes whole documents only, with an array's items one per line and sub-tables in place of inline
# tables; here each value takes one line, as in a hand-written experiment file. Scalars are tomli_w's own.
def _value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    return tomli_w.dumps({"v": value}).removeprefix("v = ").rstrip("\n")


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _value(key)
