"""`dltune config CONFIG`: print the resolved experiment."""

from __future__ import annotations

import argparse

from dltune.cli.common import add_config_args, add_json_arg, config_from, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="print the resolved experiment (defaults and overrides applied) as TOML",
                       description="Validate an experiment file and print every section and key with its value, "
                                   "every default filled in; a key that is not set (it has no default) is shown "
                                   "as a comment with what it takes.")
    add_config_args(p)
    add_json_arg(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not above: `dltune --help` does not wait for torch (the checks look names up in registries)
    from dltune.experiment.config_text import annotated_toml
    from dltune.run.checks import check

    config = config_from(args)
    check(config)
    if args.json:
        print_json(config.model_dump(mode="json"))
    else:
        print(annotated_toml(config), end="")
    return 0
