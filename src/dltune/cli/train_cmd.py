"""`dltune train CONFIG`: train one configuration and show its test metrics."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dltune.cli.common import add_config_args, add_json_arg, config_from, print_json
from dltune.cli.progress import EpochDisplay
from dltune.train import RunResult, check, prepare_run_dir, train


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one configuration and evaluate it on the test split",
                       description="Train the experiment in CONFIG; the run folder gets its resolved config, "
                                   "metrics, weights (safetensors) and environment.")
    add_config_args(p)
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/<config name>-<date>-<time>)")
    add_json_arg(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = config_from(args)
    check(config)
    run_dir = prepare_run_dir(args.out, Path(args.config).stem)
    # With --json, stdout carries only the JSON document; progress goes to stderr.
    with EpochDisplay(config.train.epochs, sys.stderr if args.json else sys.stdout) as display:
        result = train(config, on_epoch=display, out_dir=run_dir)
    if args.json:
        print_json(result.to_dict())
    else:
        show(result)
    return 0


def show(result: RunResult) -> None:
    console = Console()
    table = Table(title=f"test split: {result.data['sizes']['test']} examples")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.test.items():
        shown = f"{value:.2%}" if name in ("accuracy",) else f"{value:.4f}"
        table.add_row(f"test.{name}", shown)
    console.print(table)
    console.print(f"status {result.status} · {len(result.epochs)} epochs · {result.parameters:,} parameters",
                  highlight=False)
    console.print(f"training {result.train_seconds:.2f}s · {result.samples_per_second:,.0f} samples/s", highlight=False)
    if result.best_epoch is not None:
        console.print(f"early stopping: best epoch {result.best_epoch} by val.loss", highlight=False)
    if result.threshold is not None:
        console.print(f"decision threshold {result.threshold:.4f} (chosen on the validation split)", highlight=False)
    console.print(f"run folder: {result.run_dir}", highlight=False)
