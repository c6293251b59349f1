"""Arguments and output shared by the subcommands."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: `dltune --help` imports no more than argparse needs
    from rich.console import Console

    from dltune.experiment.config import ExperimentConfig


def add_config_args(parser: argparse.ArgumentParser, optional: bool = False) -> None:
    parser.add_argument("config", metavar="CONFIG", help="experiment file (TOML)", nargs="?" if optional else None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V",
                        help="override a setting, e.g. --set optim.lr=3e-3 (repeatable; values are TOML literals)")


def add_json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as one JSON document on stdout")


def int_list(minimum: int, example: str = "0,1,2") -> Callable[[str], list[int]]:
    """An argparse type for "0,1,2": whole numbers, each at least `minimum`. A bad value makes argparse print
    `argument --workers: expected ...` and exit 2, with no traceback."""

    def int_list(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            values = []
        if not values or min(values) < minimum:
            raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers >= {minimum}, e.g. {example}; "
                                             f"got {text!r}")
        return values

    return int_list


def optuna_logs(level: int) -> None:
    """Optuna's log level for this command. The library leaves it as the caller set it; the CLI prints a line
    per trial itself, so Optuna's own lines (INFO for each trial; WARNING for a failed trial, which dltune
    prints with its error) would only repeat them."""
    import optuna  # only the commands that run studies pay for the import

    optuna.logging.set_verbosity(level)


def config_from(args: argparse.Namespace) -> ExperimentConfig:
    from dltune.experiment.config import load_config

    return load_config(args.config, args.overrides)


FAILED = 1  # the exit code of a job that ran and failed (cli.main's docstring lists them all)


def failed(command: str, reason: str) -> int:
    """Exit 1 with `reason` as one line on stderr, `dltune COMMAND: reason`: the job ran, and its result is a
    failure (a diverged run, a search without a completed trial). Whatever the command printed (its --json
    document on stdout too) stays as it is."""
    print(f"dltune {command}: {reason}", file=sys.stderr)
    return FAILED


def print_json(document: Any) -> None:
    """`document` on stdout as strict JSON: a number that is not finite is null (dltune.strict_json)."""
    from dltune.strict_json import dump

    dump(document, sys.stdout)
    sys.stdout.write("\n")


def console() -> Console:
    """A rich console; in a log or a pipe, wide enough that tables are not squeezed into 80 columns."""
    from rich.console import Console

    con = Console()
    return con if con.is_terminal else Console(width=200)


@contextmanager
def said_on_interrupt(say: Callable[[], str | None]) -> Iterator[None]:
    """On Ctrl-C (KeyboardInterrupt out of the block): what `say()` returns, if anything, on stderr (how the work goes
    on); the interrupt then goes on up, and main() says "interrupted"."""
    try:
        yield
    except KeyboardInterrupt:
        text = say()
        if text:
            print(text, file=sys.stderr)
        raise


@contextmanager
def interruptible() -> Iterator[Callable[[], bool]]:
    """The first Ctrl-C is remembered, not raised: long loops ask the returned function at safe points (after
    an epoch, between trials) and stop there, so that no bookkeeping is cut in half. A second Ctrl-C raises
    KeyboardInterrupt at once."""
    asked: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if asked:
            raise KeyboardInterrupt
        asked.append(signum)
        print("stopping at the end of this epoch (Ctrl-C again to stop now)", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(asked)
    finally:
        signal.signal(signal.SIGINT, previous)
