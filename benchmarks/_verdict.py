"""The verdict on a benchmark's target, with the limit that this machine sets, measured in the same run."""

from __future__ import annotations

from collections.abc import Callable


def verdict(value: float, target: float, *, higher: bool = True, limit: float | None = None, source: str = "",
            shown: Callable[[float], str] = "{:.2f}".format) -> str:
    """"met"; or, when the limit measured here does not reach the target, "not met (limit here: 1.31, from
    <source>)": no software could meet it on this machine; or "NOT met", a miss that the limit does not
    excuse (it names the limit too when there is one)."""
    reaches = (lambda x: x >= target) if higher else (lambda x: x <= target)
    where = "" if limit is None else f" (limit here: {shown(limit)}{', from ' + source if source else ''})"
    if reaches(value):
        return "met"
    if limit is not None and not reaches(limit):
        return "not met" + where
    return "NOT met" + where
