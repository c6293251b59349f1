"""`dltune batch-find CONFIG`: the fastest batch size (throughput) or the largest that fits (memory)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dltune.cli.common import add_config_args, add_json_arg, config_from, console, int_list, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("batch-find", help="find the fastest batch size, or the largest that fits in memory",
                       description="Throughput mode: samples/s per batch size, choosing the smallest within 5% of "
                                   "the best. Memory mode: the largest batch that fits (CUDA memory, or "
                                   "--memory-budget bytes on the CPU).")
    add_config_args(p)
    p.add_argument("--mode", choices=("throughput", "memory"), default="throughput",
                   help="throughput: the fastest batch size; memory: the largest that fits (default: %(default)s)")
    p.add_argument("--sizes", type=int_list(1, "32,64,128"), metavar="32,64,128",
                   help="batch sizes to time in throughput mode, comma-separated (default: 16, 32, ..., 2048, "
                        "up to the training split's size)")
    p.add_argument("--memory-budget", type=float, metavar="BYTES", help="memory mode on the CPU, e.g. 2e9")
    p.add_argument("--couple-lr", choices=("linear", "sqrt"), help="rescale optim.lr for the chosen batch")
    p.add_argument("--rerun-lr", action="store_true", help="with --couple-lr: run the lr range test at that batch")
    p.add_argument("--plot", metavar="PNG", help="where to draw the chart; a file there is replaced (default: "
                                                 "runs/<config>-batch-find.png, or -2, -3, ... beside earlier ones)")
    add_json_arg(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not above: `dltune --help` does not wait for torch and matplotlib
    from rich.table import Table

    from dltune.report.finder_plots import batch_plot, save
    from dltune.tuner.finders import batch_find

    config = config_from(args)
    result = batch_find(config, mode=args.mode, sizes=args.sizes,
                        memory_budget=int(args.memory_budget) if args.memory_budget else None,
                        couple_lr=args.couple_lr, rerun_lr=args.rerun_lr)
    plot, replaced = save(batch_plot(result), args.plot, Path("runs") / f"{Path(args.config).stem}-batch-find.png")
    if args.json:
        print_json({"mode": result.mode, "chosen": result.chosen, "sizes": result.sizes,
                    "samples_per_second": result.samples_per_second, "memory_bytes": result.memory_bytes,
                    "budget_bytes": result.budget_bytes, "lr": result.lr,
                    "rerun_lr_suggested": result.lr_find.suggested if result.lr_find else None, "plot": str(plot)})
        return 0
    table = Table(title=f"batch-find ({result.mode})")
    table.add_column("batch", justify="right")
    table.add_column("samples/s" if result.mode == "throughput" else "MiB per step", justify="right")
    table.add_column("")
    values = result.samples_per_second if result.mode == "throughput" else result.memory_bytes
    best = max(values.values()) if result.mode == "throughput" else None
    for b in sorted(values):
        shown = f"{values[b]:,.0f}" if best else f"{values[b] / 2**20:,.1f}"
        note = "chosen" if b == result.chosen else (f"{values[b] / best:.0%} of best" if best else "")
        table.add_row(str(b), shown, note)
    out = console()
    out.print(table)
    out.print(f"chosen batch size: {result.chosen}", highlight=False)
    if result.lr is not None:
        out.print(f"lr for it ({args.couple_lr} coupling from batch {config.batch.size}): {result.lr:.3g}",
                  highlight=False)
    if result.lr_find is not None:
        out.print(f"lr range test at batch {result.chosen}: suggested {result.lr_find.suggested}", highlight=False)
    out.print(f"plot: {plot}{' (replaced the earlier file)' if replaced else ''}", highlight=False)
    return 0
