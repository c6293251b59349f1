"""Strict JSON: documents without NaN or Infinity, which are not JSON (Python's parse_constant, jq and JavaScript's
JSON.parse refuse them); what every --json prints and what a run records."""

from __future__ import annotations

import json
import math
from typing import IO, Any

__all__ = ["dump", "json_ready"]


def json_ready(value: Any) -> Any:
    """`value` with every number that is not finite made None, numpy's scalars made Python's, tuples made lists."""
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()  # a numpy scalar (numpy is not imported for this)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def dump(document: Any, stream: IO[str], indent: int | None = 2) -> None:
    """`document` as strict JSON on `stream`; a value json cannot write stays an error (allow_nan=False)."""
    json.dump(json_ready(document), stream, indent=indent, allow_nan=False)
