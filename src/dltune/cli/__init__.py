"""The `dltune` command: one module per subcommand; each parses its arguments and calls one function.

A subcommand's module imports at its top only what building the parser needs (argparse and the light helpers of
cli.common); its `run` imports the library it calls. So `dltune --help` and `dltune train --help` start without
torch, Optuna or scikit-learn, and each command loads only what it uses (tests/test_startup.py)."""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
import traceback

from dltune.cli import (
    ablate_cmd,
    batch_find_cmd,
    compress_cmd,
    config_cmd,
    ensemble_cmd,
    example_cmd,
    listing,
    loader_find_cmd,
    lr_find_cmd,
    predict_cmd,
    profile_cmd,
    report_cmd,
    train_cmd,
    tune_cmd,
    worker_cmd,
)
from dltune.errors import DltuneError

__all__ = ["main"]

SUBCOMMANDS = (train_cmd, ablate_cmd, report_cmd, tune_cmd, worker_cmd, lr_find_cmd, batch_find_cmd, loader_find_cmd,
               profile_cmd, compress_cmd, ensemble_cmd, predict_cmd, config_cmd, listing.datasets, listing.models,
               example_cmd)


class _Version(argparse.Action):
    """--version: `dltune X.Y.Z` on stdout, exit 0. The installed package's metadata, read when asked: `import
    dltune` is not needed, and torch is never imported for it."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            said = f"dltune {version('dltune')}"
        except PackageNotFoundError:  # run from a source tree that was never installed (pip install -e .)
            said = "dltune (version unknown: the package is not installed; pip install -e . installs it)"
        print(said)
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dltune",
        description="Tune the performance of deep learning models: train, compare and search, with evidence.",
    )
    parser.add_argument("--version", action=_Version, help="print dltune's version and exit")
    parser.add_argument("--debug", action="store_true", help="on an error, show its traceback (your own code's too)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    parser.commands = list(sub.choices)  # type: ignore[attr-defined]  # for "did you mean"
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `dltune ARGV`; its exit code (README, "Exit codes"):

    0  the job ran and succeeded (a run that stopped early, a search with a completed trial);
    1  the job ran and failed, said in one line on stderr (common.failed): a diverged run, a search that ended
       with no completed trial, an ablation whose every run diverged, an ensemble with no member;
    2  bad input (DltuneError, argparse's usage errors), nothing stored touched;
    130  interrupted (Ctrl-C, SIGINT).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:  # anywhere on the line: dltune train exp.toml --debug
        argv = ["--debug", *(a for a in argv if a != "--debug")]
    parser = build_parser()
    words = [a for a in argv if a != "--debug"]
    if not words:  # `dltune` alone: what it can do
        parser.print_help(sys.stderr)
        return 2
    known = list(parser.commands)  # type: ignore[attr-defined]
    if not words[0].startswith("-") and words[0] not in known:
        close = difflib.get_close_matches(words[0].replace("_", "-"), known, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"dltune: error: unknown command {words[0]!r}{hint}; commands: {', '.join(known)}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # [tracking]: its database set-up is not the user's news
    said = logging.StreamHandler(sys.stderr)  # dltune's own warnings (a crowded machine), as plain lines
    said.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("dltune").addHandler(said)
    logging.getLogger("dltune").setLevel(logging.WARNING)  # whatever level a library left on the root logger
    try:
        return args.run(args) or 0
    except DltuneError as e:
        if args.debug:
            traceback.print_exception(e)
        print(f"dltune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `dltune train ... --json | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"dltune {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        logging.getLogger("dltune").removeHandler(said)
