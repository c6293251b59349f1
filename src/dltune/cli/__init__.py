"""The `dltune` command: one module per subcommand; each parses its arguments and calls one function."""

from __future__ import annotations

import argparse
import sys

from dltune.cli import (ablate_cmd, batch_find_cmd, config_cmd, listing, loader_find_cmd, lr_find_cmd, report_cmd,
                        train_cmd, tune_cmd, worker_cmd)
from dltune.errors import DltuneError

__all__ = ["main"]

SUBCOMMANDS = (train_cmd, ablate_cmd, report_cmd, tune_cmd, worker_cmd, lr_find_cmd, batch_find_cmd, loader_find_cmd,
               config_cmd, listing.datasets, listing.models)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dltune",
        description="Tune the performance of deep learning models: train, compare and search, with evidence.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except DltuneError as e:
        print(f"dltune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `dltune train ... --json | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"dltune {args.command}: interrupted", file=sys.stderr)
        return 130
