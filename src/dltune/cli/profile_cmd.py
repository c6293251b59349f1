"""`dltune profile CONFIG`: where a training step's time goes, and advice measured by running each change."""

from __future__ import annotations

import argparse

from dltune.cli.common import add_config_args, add_json_arg, config_from, console, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="time a training step's phases and operators, with measured advice",
                       description="Train a few steps of the experiment as configured and say where each step's "
                                   "time goes (batching, forward, loss, backward, optimizer, the techniques' own "
                                   "cost, evaluation), with torch.profiler's top operators, throughput, peak memory "
                                   "and FLOP/s against a matmul peak measured in the same run; then advice, each "
                                   "item checked by running the changed setting for a few steps.")
    add_config_args(p)
    p.add_argument("--steps", type=int, default=50,
                   help="training steps timed in each pass, after 5 of warm-up (default: %(default)s)")
    p.add_argument("--trace", metavar="FILE",
                   help="write torch.profiler's Chrome trace of the profiled steps there, for Perfetto or "
                        "chrome://tracing (a file there is replaced)")
    add_json_arg(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not above: `dltune --help` does not wait for torch
    from dltune.report.profile_report import render
    from dltune.tuner.profile import profile

    result = profile(config_from(args), steps=args.steps, trace=args.trace)
    if args.json:
        print_json(result.to_dict())
        return 0
    render(result, console(), args.config)
    return 0
