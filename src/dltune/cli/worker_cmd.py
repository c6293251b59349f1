"""`dltune worker --storage URL --study NAME`: join a running search from this process or machine."""

from __future__ import annotations

import argparse
import logging
import sys

from dltune.cli.common import failed, interruptible, optuna_logs, said_on_interrupt
from dltune.cli.tune_cmd import CUT_SHORT, printer


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="join a running search from this process or machine",
                       description="Run trials of a stored study (its experiment is read from the storage) until "
                                   "the study holds its target of finished trials.")
    p.add_argument("--storage", metavar="URL", required=True, help="the study's Optuna storage URL")
    p.add_argument("--study", metavar="NAME", required=True, help="the study's name")
    p.add_argument("--out", metavar="DIR", help="where this worker keeps its trials' runs (default: runs/NAME)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--threads", type=int, help="torch threads per trial (default: torch's)")
    p.add_argument("--config", metavar="FILE", help="the experiment file, needed when it names code of your own "
                                                    "(import paths): the storage alone never makes a worker import it")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not above: `dltune --help` does not wait for torch and Optuna
    from dltune.experiment.config import load_config
    from dltune.report.cells import plural
    from dltune.study.studies import FailingSearch
    from dltune.study.tune import work

    optuna_logs(logging.ERROR)
    with said_on_interrupt(lambda: CUT_SHORT), interruptible() as interrupted:
        try:
            ran = work(args.storage, args.study, out_dir=args.out, timeout=args.timeout, threads=args.threads,
                       on_trial=printer(sys.stdout), should_stop=interrupted,
                       config=load_config(args.config) if args.config else None)
        except FailingSearch as e:  # it ran, and trial after trial failed: exit 1, not bad input
            return failed("worker", str(e))
    print(f"worker done: {plural(ran, 'trial')} run here")
    return 0
