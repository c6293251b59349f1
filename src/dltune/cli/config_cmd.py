"""`dltune config CONFIG`: print the resolved experiment."""

from __future__ import annotations

import argparse

from dltune.cli.common import add_config_args, add_json_arg, config_from, print_json
from dltune.config import to_toml
from dltune.train import check


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="print the resolved experiment (defaults and overrides applied) as TOML",
                       description="Validate an experiment file and print it with every default filled in.")
    add_config_args(p)
    add_json_arg(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = config_from(args)
    check(config)
    if args.json:
        print_json(config.model_dump(mode="json"))
    else:
        print(to_toml(config), end="")
    return 0
