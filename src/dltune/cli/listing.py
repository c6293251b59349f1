"""`dltune datasets` and `dltune models`: what the registries hold."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from types import SimpleNamespace

from dltune.cli.common import add_json_arg, print_json
from dltune.registry import Registry


def _summary(obj: object) -> str:
    return (obj.__doc__ or "").strip().splitlines()[0] if obj.__doc__ else ""


def _lister(command: str, registry: Callable[[], Registry], title: str, help_text: str) -> SimpleNamespace:
    """The subcommand `command` that lists `registry()`; the registry is imported when the command runs, not
    when the parser is built (the models' registry imports torch)."""
    def add_parser(sub: argparse._SubParsersAction) -> None:
        p = sub.add_parser(command, help=help_text, description=help_text)
        add_json_arg(p)
        p.set_defaults(run=run)

    def run(args: argparse.Namespace) -> int:
        from rich.console import Console
        from rich.table import Table

        rows = [{"name": name, "description": _summary(obj)} for name, obj in registry().items()]
        if args.json:
            print_json(rows)
            return 0
        table = Table(title=title)
        table.add_column("name", style="bold")
        table.add_column("description")
        for row in rows:
            table.add_row(row["name"], row["description"])
        Console().print(table)
        return 0

    return SimpleNamespace(add_parser=add_parser, run=run)


def _datasets() -> Registry:
    from dltune.data import DATASETS

    return DATASETS


def _models() -> Registry:
    from dltune.models import MODELS

    return MODELS


datasets = _lister("datasets", _datasets, "datasets (data.name)", "list the datasets that data.name can name")
models = _lister("models", _models, "models (model.name)", "list the models that model.name can name")
