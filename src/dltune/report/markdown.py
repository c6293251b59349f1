"""The results table as GitHub Markdown: one row per variant, the baseline first."""

from __future__ import annotations

from dltune.report.cells import cells, columns
from dltune.report.tables import Row

__all__ = ["table"]


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def table(rows: list[Row], metric: str) -> str:
    """A GitHub Markdown table of `rows` (from `tables.compare`), numbers right-aligned."""
    cols = columns(metric)
    lines = [
        "| " + " | ".join(_escape(c.name) for c in cols) + " |",
        "|" + "|".join("---:" if c.numeric else "---" for c in cols) + "|",
    ]
    lines += ["| " + " | ".join(_escape(cell) for cell in cells(row, metric)) + " |" for row in rows]
    return "\n".join(lines) + "\n"
