"""`dltune predict MODEL_DIR --input FILE`: a trained model's predictions on new examples."""

from __future__ import annotations

import argparse
from collections import Counter

from dltune.cli.common import add_json_arg, console, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict new examples with a run, an ensemble or a compressed ONNX model",
                       description="Read the examples of FILE (.npz: the array 'x' or the only array; .csv: one "
                                   "example per row; an IDX file), in the units of the training data (MNIST: "
                                   "pixels 0-255), normalize them with the statistics the run recorded, and write "
                                   "each example's class and class probabilities (regression: its value) as CSV "
                                   "or NPZ.")
    p.add_argument("model_dir", metavar="MODEL_DIR",
                   help="a run folder, a trial's folder, a search's best/, an ensemble's folder, or a folder of "
                        "dltune compress (model.onnx)")
    p.add_argument("--input", required=True, metavar="FILE", help="the examples: .npz, .csv or IDX")
    p.add_argument("--output", metavar="FILE", help="where to write them: .csv or .npz (default: "
                                                     "INPUT-predictions.csv here, -2, ... when taken); must not exist")
    add_json_arg(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not above: `dltune --help` does not wait for torch
    from dltune.prediction import predict

    result = predict(args.model_dir, args.input, args.output)
    if args.json:
        print_json(result.to_dict())
        return 0
    out = console()
    what = {"run": "run", "ensemble": "ensemble", "onnx": "ONNX model"}[result.kind]
    out.print(f"{result.examples} examples predicted by the {what} in {result.model_dir}", highlight=False)
    if result.labels is not None:
        names = result.classes or []
        counts = Counter(names[i] if names else str(i) for i in result.labels)
        out.print("examples per predicted label: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
                  highlight=False)
    for note in result.notes:
        out.print(f"note: {note}", highlight=False)
    out.print(f"written: {result.output}", highlight=False)
    return 0
