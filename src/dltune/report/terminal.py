"""The results table for the terminal, as a rich Table."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dltune.report.cells import DELTA, cells, columns, direction
from dltune.report.tables import Row

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["rich_table"]

_STYLES = {"better": "bold green", "worse": "bold red", None: "dim"}


def rich_table(rows: list[Row], metric: str, title: str | None = None, *, higher_is_better: bool = True) -> Table:
    """`rows` as a rich Table; Δ is green or red only where p < 0.05 (by `higher_is_better`), else dim."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, caption="mean ± std over n seeds · 95% CI by Student's t · p: Welch's t-test "
                                       "against the baseline", caption_justify="left")
    for col in columns(metric):
        table.add_column(col.name, justify="right" if col.numeric else "left",
                         no_wrap=col.numeric or col.name == "variant", overflow="fold")
    for row in rows:
        texts = [Text(cell) for cell in cells(row, metric)]
        if row.delta is not None:
            texts[DELTA].stylize(_STYLES[direction(row, higher_is_better)])
        table.add_row(*texts)
    return table
