"""`dltune loader-find CONFIG`: epoch time per DataLoader worker count and torch thread count."""

from __future__ import annotations

import argparse

from dltune.cli.common import add_config_args, add_json_arg, config_from, console, int_list, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("loader-find", help="time an epoch per DataLoader worker count and torch thread count",
                       description="Measure, do not assume: epoch time of dltune's in-memory batching per thread "
                                   "count, and of a DataLoader per worker count; recommend the fastest. Workers "
                                   "change speed, never accuracy.")
    add_config_args(p)
    p.add_argument("--workers", type=int_list(0), metavar="0,1,2",
                   help="DataLoader worker counts to time, comma-separated (default: 0,1,2)")
    p.add_argument("--threads", type=int_list(1, "1,2,4"), metavar="1,2",
                   help="torch thread counts to time, comma-separated (default: 1 and all cores)")
    p.add_argument("--repeats", type=int, default=3, help="epochs timed per setting; the median counts "
                                                          "(default: %(default)s)")
    add_json_arg(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not above: `dltune --help` does not wait for torch
    from rich.table import Table

    from dltune.tuner.finders import loader_find

    result = loader_find(config_from(args), workers=args.workers, threads=args.threads, repeats=args.repeats)
    if args.json:
        print_json({"rows": result.rows, "best": result.best})
        return 0
    table = Table(title="loader-find: seconds per training epoch (median)")
    for name in ("path", "workers", "threads", "epoch s", ""):
        table.add_column(name, justify="left" if name in ("path", "") else "right")
    best = result.best["epoch_seconds"]
    for row in result.rows:
        ratio = "fastest" if row is result.best else f"{row['epoch_seconds'] / best:.1f}x"
        table.add_row(row["path"], "—" if row["workers"] is None else str(row["workers"]), str(row["threads"]),
                      f"{row['epoch_seconds']:.3f}", ratio)
    out = console()
    out.print(table)
    b = result.best
    workers = "" if b["workers"] is None else f", DataLoader workers {b['workers']}"
    out.print(f"recommended: {b['path']}, parallel.threads = {b['threads']}{workers}", highlight=False)
    return 0
