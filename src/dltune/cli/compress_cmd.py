"""`dltune compress RUN_DIR`: prune, export, quantize or distill a trained model, and measure each beside it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dltune.cli.common import add_json_arg, console, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="shrink and speed up a trained model: prune, int8 ONNX, distill; measured",
                       description="Apply each method or chain of [compress] methods (from the run's experiment, "
                                   "or --config FILE) to the model of RUN_DIR, write each result to a folder of its "
                                   "own (model.onnx, model.safetensors where torch runs it, config.toml, "
                                   "metrics.json, row.md), and measure all of them beside the original: size, "
                                   "parameters, latency (interleaved, medians), test metric.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, a trial's folder, or a search's best/ folder")
    p.add_argument("--config", metavar="FILE", help="take [compress] from this experiment file instead of the run's")
    p.add_argument("--out", metavar="DIR", help="output folder (default: RUN_DIR-compressed, -2, ... when taken); "
                                                 "new or empty")
    p.add_argument("--seeds", type=int, metavar="N", help="seeds for the methods that train (default: compress.seeds)")
    p.add_argument("--methods", metavar="M[,M...]",
                   help="instead of compress.methods: e.g. prune,int8,prune+int8 (methods: prune, magnitude, "
                        "distill, onnx, int8; '+' chains them)")
    add_json_arg(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not above: `dltune --help` does not wait for torch
    from dltune.cli.progress import TrainingLines
    from dltune.compression import compress
    from dltune.errors import ConfigError
    from dltune.report.compress_report import publish, terminal_table

    if args.seeds is not None and args.seeds < 1:
        raise ConfigError(f"--seeds {args.seeds}: must be 1 or more")
    methods = None if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    if methods == []:
        raise ConfigError("--methods: empty; e.g. --methods prune,int8,prune+int8")
    with TrainingLines(sys.stderr if args.json else sys.stdout) as lines:  # --json: stdout holds the JSON alone
        result = compress(args.run_dir, args.out, config=args.config, seeds=args.seeds, methods=methods,
                          on_row=lines.line, on_epoch=lines)
    html, markdown = publish(result, Path(result.out_dir))
    if args.json:
        print_json({**result.to_dict(), "report": str(html), "markdown": str(markdown)})
        return 0
    out = console()
    out.print(terminal_table(result))
    out.print(f"report: {html}", highlight=False)
    out.print(f"markdown table: {markdown}", highlight=False)
    return 0
