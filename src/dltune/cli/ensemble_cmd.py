"""`dltune ensemble SOURCE`: combine the best trials of a search, or the seeds of an ablation variant, and measure the
ensemble against its best single member."""

from __future__ import annotations

import argparse
from pathlib import Path

from dltune.cli.common import add_json_arg, console, failed, print_json

METHODS = "mean, vote, weighted, greedy, uniform-soup, greedy-soup (soup)"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ensemble", help="combine the best trials of a search (or an ablation variant's seeds)",
                       description="Combine the top K completed trials of a search (ranked by its validation "
                                   "objective), or every seed of one ablation variant, fit the combination on the "
                                   "validation split, and measure it on the test split against the best single "
                                   "member (paired bootstrap interval). The ensemble is saved as a folder that "
                                   "`dltune predict` reads without the study.")
    p.add_argument("source", metavar="SOURCE", nargs="?",
                   help="the output folder of `dltune tune` or `dltune ablate` (or give --storage)")
    p.add_argument("--top", type=int, metavar="K", help="a search's K best completed trials (default: 5)")
    p.add_argument("--variant", metavar="NAME", help="an ablation's variant whose seeds are the members")
    p.add_argument("--method", default="greedy", metavar="M", help=f"{METHODS} (default: greedy)")
    p.add_argument("--storage", metavar="URL", help="the study's Optuna storage URL instead of SOURCE's")
    p.add_argument("--study", metavar="NAME", help="the study's name (default: the only search or ablation there)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: SOURCE-ensemble, -2, ... when taken); "
                                                 "new or empty")
    add_json_arg(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not above: `dltune --help` does not wait for torch
    from dltune.ensembles import ensemble
    from dltune.ensembles.run import NoMembers
    from dltune.report.ensemble_report import publish, terminal_table

    try:
        result = ensemble(args.source, args.out, top=args.top, method=args.method, variant=args.variant,
                          storage=args.storage, study=args.study)
    except NoMembers as e:  # the search or ablation ran and trained nothing to combine: exit 1, not bad input
        return failed("ensemble", str(e))
    html = publish(result, Path(result.out_dir))
    if args.json:
        print_json({**result.to_dict(), "report": str(html)})
        return 0
    out = console()
    out.print(terminal_table(result))
    out.print(f"ensemble: {result.out_dir}", highlight=False)
    out.print(f"report: {html}", highlight=False)
    return 0
