"""`dltune report DIR`: rebuild an ablation's table and HTML report from its storage alone."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from dltune.cli.common import add_json_arg, console, optuna_logs, print_json
from dltune.errors import ConfigError

if TYPE_CHECKING:
    from dltune.study.records import AblationData


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="rebuild the table and HTML report of an ablation from its storage",
                       description="Read the ablation stored in DIR (or --storage) and write DIR/report.html and "
                                   "DIR/results.md again; nothing is trained.")
    p.add_argument("dir", metavar="DIR", help="the ablation's output folder")
    p.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: sqlite:///DIR/study.db)")
    p.add_argument("--study", metavar="NAME", help="the ablation's study name (default: the only one there)")
    add_json_arg(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not above: `dltune --help` does not wait for Optuna
    from dltune.study.ablate import default_storage, load_ablation

    optuna_logs(logging.WARNING)
    out = Path(args.dir)
    if args.storage is None and not (out / "study.db").is_file():
        raise ConfigError(f"{out}: no study.db here; give the ablation's output folder or --storage URL")
    data = load_ablation(args.storage or default_storage(out), args.study)
    return show(data, out, args.json)


def show(data: AblationData, out: Path, as_json: bool) -> int:
    """Write the report files; print the table (or the rows as JSON) and where the report is."""
    from dltune.report.cells import plural
    from dltune.report.publish import publish
    from dltune.report.tables import rows_to_json
    from dltune.report.terminal import rich_table

    published = publish(data, out)
    if as_json:
        print_json(rows_to_json(published.rows))
        return 0
    out_console = console()
    title = f"{data.study}: {data.metric}, {plural(len(data.seeds), 'seed')}, {data.mode}"
    out_console.print(rich_table(published.rows, data.metric, title, higher_is_better=data.higher_is_better))
    out_console.print(f"report: {published.html}", highlight=False)
    out_console.print(f"markdown table: {published.markdown}", highlight=False)
    return 0
