"""Random search with full training against TPE + ASHA, on mnist-5k with the MLP.

The space: lr, schedule, batch size, weight decay, dropout and width. Each search runs 32 trials
of up to 10 epochs, maximizing val.accuracy (the test split stays out of the search); a search's
"best" is the test accuracy of its best trial by val.accuracy. Both searches use the same split
(data.seed) and run over the same 3 search seeds; the cost is the total number of epochs trained.
Medians over the seeds are reported. `--pruner optuna-asha` runs Optuna's successive halving (decided
once, when a trial reaches a rung) in place of dltune's ASHA (trials paused at a rung until promoted).

Run:  .venv/bin/python benchmarks/bench_tune.py [--json] [--seeds 3] [--trials 32] [--reduction-factor 4]
                                                [--pruner asha|optuna-asha]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna
from _verdict import verdict

from dltune.experiment.config import load_config, override
from dltune.study.tune import tune

CONFIG = Path(__file__).resolve().parent.parent / "examples" / "seed_mnist.toml"
SPACE = {
    "optim.lr": {"low": 1e-4, "high": 3e-2, "log": True},
    "schedule.name": ["constant", "cosine", "onecycle", "exponential"],
    "batch.size": [32, 64, 128, 256],
    "optim.weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
    "model.dropout": {"low": 0.0, "high": 0.5},
    "model.hidden": [[64], [128], [256], [512], [1024]],
}


def search(sampler: str, pruner: str, seed: int, trials: int, reduction: int) -> tuple[float, int, float]:
    """(test accuracy of the best trial by val.accuracy, epochs trained, seconds)."""
    config = override(load_config(CONFIG), {
        "ablation.variants": {}, "schedule.gamma": 0.9,
        "search": {"objectives": ["val.accuracy"], "sampler": sampler, "pruner": pruner, "trials": trials,
                   "seed": seed, "reduction_factor": reduction, "space": SPACE}})
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        data = tune(config, out_dir=out)
        seconds = time.perf_counter() - start
    best = next(t for t in data.trials if t.number == data.best[0])
    return best.test["accuracy"], sum(len(t.epochs) for t in data.trials), seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--reduction-factor", type=int, default=4, help="ASHA: keep 1 in this many per rung")
    parser.add_argument("--pruner", choices=["asha", "optuna-asha"], default="asha")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a script's choice: dltune leaves Optuna's logging as found
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else print
    runs: dict[str, list[tuple[float, int, float]]] = {"random": [], "asha": []}
    for seed in range(args.seeds):
        for name, (sampler, pruner) in (("random", ("random", "none")), ("asha", ("tpe", args.pruner))):
            runs[name].append(search(sampler, pruner, seed, args.trials, args.reduction_factor))
            acc, epochs, seconds = runs[name][-1]
            log(f"seed {seed} {name:>6}: best test accuracy {acc:.4f}, {epochs} epochs, {seconds:.0f}s")
    med = {name: [statistics.median(r[i] for r in rs) for i in range(3)] for name, rs in runs.items()}
    report = {"random_best": med["random"][0], "random_epochs": med["random"][1],
              "asha_best": med["asha"][0], "asha_epochs": med["asha"][1],
              "epoch_ratio": med["asha"][1] / med["random"][1]}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    gap = round((report["asha_best"] - report["random_best"]) * 100, 6)  # points; test accuracy moves by 0.1
    print(f"{args.trials} trials per search, {args.seeds} search seeds (medians), pruner {args.pruner}, "
          f"reduction factor {args.reduction_factor}")
    print(f"  random search, full training: best {report['random_best']:.2%}, {report['random_epochs']:.0f} epochs, "
          f"{med['random'][2]:.0f}s")
    print(f"  TPE + {args.pruner + ':':<24}best {report['asha_best']:.2%}, {report['asha_epochs']:.0f} epochs, "
          f"{med['asha'][2]:.0f}s")
    print(f"  accuracy gap {gap:+.2f} points (target: within 0.2 below): {verdict(gap, -0.2)}")
    print(f"  epoch ratio {report['epoch_ratio']:.2f} (target <= 0.25): "
          f"{verdict(report['epoch_ratio'], 0.25, higher=False)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
