"""Tables, plots and reports of an ablation's results: rows as data, then Markdown, terminal and HTML layouts."""

from __future__ import annotations

from dltune.report.html import write_report
from dltune.report.markdown import table as markdown_table
from dltune.report.tables import Row, compare, rows_to_json
from dltune.report.terminal import rich_table

__all__ = ["Row", "compare", "markdown_table", "rich_table", "rows_to_json", "write_report"]
