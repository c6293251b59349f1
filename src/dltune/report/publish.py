"""Write an ablation's report files: the HTML report and the Markdown table, from its rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dltune.files import write_text
from dltune.report.html import write_report
from dltune.report.markdown import table
from dltune.report.tables import Row, compare
from dltune.study.records import AblationData

__all__ = ["Published", "publish"]


@dataclass(frozen=True)
class Published:
    rows: list[Row]
    html: Path
    markdown: Path


def publish(data: AblationData, out_dir: str | Path) -> Published:
    """Compute the rows and write out_dir/report.html and out_dir/results.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = compare(data)
    markdown = out / "results.md"
    write_text(markdown, table(rows, data.metric) + "\n")
    return Published(rows, write_report(data, rows, out / "report.html"), markdown)
