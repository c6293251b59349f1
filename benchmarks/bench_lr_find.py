"""lr-find's rules judged by what training at their suggestion reaches, against the best of an lr grid.

What is measured, on each problem (a model, a dataset, an optimizer) and each schedule (constant; one-cycle, where
the lr is the cycle's peak, as fastai uses the finder's lr):

* for each seed, `dltune.tuner.finders.lr_find` on the problem (default sweep: 1e-7 to 10, 100 steps), then every rule
  of `dltune.tuner.lr_rules.RULES` on that curve, and the finder's own `suggested` and `confident`;
* test accuracy after training (`dltune.train`) at each rule's lr with the same seed (the seed fixes the
  split, the initial weights and the batch order), and at every lr of a half-decade grid with the same seeds;
* gap = the grid's best mean accuracy - the rule's mean accuracy, in points (negative: the rule beat the grid).
  The best of 7 noisy grid means is biased upward (the winner's curse), so the gaps are, if anything, pessimistic;
  the default rule's gap comes with its standard error over seeds (paired: the same seed at both lrs).

Targets: dltune's default rule (`lr_rules.rule_for`: one rule for a constant lr, one for the peak of a schedule that
decays, one for a sweep whose loss never blew up) within 0.5 points of the grid's best on every problem;
and no confident miss: on the seeds where the finder says "confident", the default's mean gap (paired by seed with
the grid's best lr) is within 0.5 points on every problem.
A run that diverges counts as accuracy 0. Nothing is cached between runs; every run is on the CPU, 1 thread per job.

Run:  .venv/bin/python benchmarks/bench_lr_find.py [--json] [--out FILE] [--seeds 5] [--jobs 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from _verdict import verdict

from dltune.experiment.config import load_config, override
from dltune.tuner.finders import lr_find
from dltune.tuner.lr_rules import RULES, curve_rules, rule_for, trimmed
from dltune import train

ROOT = Path(__file__).resolve().parent.parent
SEED_MNIST = ROOT / "examples" / "seed_mnist.toml"
OWN_MODEL = ROOT / "examples" / "own_model" / "own_model.toml"
ADAM_GRID = [1e-4 * 10 ** (k / 2) for k in range(7)]  # 1e-4 .. 1e-1, half decades
SGD_GRID = [1e-3 * 10 ** (k / 2) for k in range(7)]  # 1e-3 .. 1
DIGITS_MLP = {"data.name": "digits", "model.hidden": [128], "batch.size": 32}
# name -> (experiment file, overrides, lr grid); every problem's lr-find and training use the same file
PROBLEMS: dict[str, tuple[Path, dict[str, Any], list[float]]] = {
    "mlp-mnist": (SEED_MNIST, {}, ADAM_GRID),  # the reference experiment: MLP 784-500-10, Adam, 10 epochs
    "mlp-digits": (SEED_MNIST, DIGITS_MLP, ADAM_GRID),
    "mlp-digits-sgd": (SEED_MNIST, {**DIGITS_MLP, "optim.name": "sgd", "optim.momentum": 0.9}, SGD_GRID),
    "cnn-mnist": (SEED_MNIST, {"model.name": "cnn", "model.channels": [8, 16], "model.head": [64],
                               "train.epochs": 5}, ADAM_GRID),
    "own-model": (OWN_MODEL, {"data.args": {}, "train.epochs": 6}, ADAM_GRID),  # residual BN CNN, all 1,797 digits
}
SCHEDULES = {"constant": {"schedule.name": "constant"}, "onecycle": {"schedule.name": "onecycle"}}
QUICK = {"problems": ["mlp-digits", "own-model"], "seeds": 2, "epochs": 3}
TARGET = 0.5  # points of test accuracy


def _config(problem: str, seed: int, extra: dict[str, Any], epochs: int | None) -> Any:
    path, overrides, _ = PROBLEMS[problem]
    settings = {**overrides, "train.seed": seed, "train.device": "cpu", "parallel.threads": 1, **extra}
    if epochs is not None:
        settings["train.epochs"] = epochs
    return override(load_config(path), settings)


def _find(job: tuple[str, int, int | None]) -> dict[str, Any]:
    problem, seed, epochs = job
    result = lr_find(_config(problem, seed, {}, epochs))
    finite = [i for i, v in enumerate(result.smoothed) if math.isfinite(v)]
    lr, s = trimmed(np.array(result.lrs)[finite], np.array(result.smoothed)[finite])
    return {"rules": curve_rules(lr, s) if len(finite) >= 5 else {}, "suggested": result.suggested,
            "confident": result.confident, "reasons": result.reasons, "spread": result.spread_decades,
            "blew_up": result.stopped_early}


def _train(job: tuple[str, str, int, float, int | None]) -> float:
    problem, schedule, seed, lr, epochs = job
    result = train(_config(problem, seed, {**SCHEDULES[schedule], "optim.lr": lr}, epochs))
    return result.test["accuracy"] if result.status == "completed" and "accuracy" in result.test else 0.0


def _mean(values: list[float]) -> float:
    return statistics.fmean(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only a JSON document")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 1..N per problem (default: %(default)s)")
    parser.add_argument("--first-seed", type=int, default=1,
                        help="seeds FIRST..FIRST+N-1: new seeds check a rule chosen on others (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="training processes, 1 thread each")
    parser.add_argument("--out", metavar="JSON", help="also write the JSON document to this file")
    parser.add_argument("--quick", action="store_true",
                        help=f"development run: {', '.join(QUICK['problems'])}, {QUICK['seeds']} seeds, "
                             f"{QUICK['epochs']} epochs")
    parser.add_argument("--problems", nargs="+", choices=list(PROBLEMS), metavar="NAME",
                        help=f"only these problems (default: all of {', '.join(PROBLEMS)})")
    parser.add_argument("--schedules", nargs="+", choices=list(SCHEDULES), metavar="NAME",
                        help=f"only these schedules (default: all of {', '.join(SCHEDULES)})")
    args = parser.parse_args()
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else print
    problems = args.problems or (QUICK["problems"] if args.quick else list(PROBLEMS))
    schedules = args.schedules or list(SCHEDULES)
    seeds = list(range(args.first_seed, args.first_seed + (QUICK["seeds"] if args.quick else args.seeds)))
    epochs = QUICK["epochs"] if args.quick else None
    start = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        finds = dict(zip([(p, s) for p in problems for s in seeds],
                         pool.map(_find, [(p, s, epochs) for p in problems for s in seeds])))
        log(f"lr-find on {len(finds)} problem-seeds: {time.perf_counter() - start:.0f}s")
        jobs = sorted({(p, sched, s, lr, epochs) for p in problems for sched in schedules for s in seeds
                       for lr in [*PROBLEMS[p][2], *finds[p, s]["rules"].values()]})
        accuracy = dict(zip(jobs, pool.map(_train, jobs)))
    seconds = time.perf_counter() - start
    log(f"{len(jobs)} training runs: {seconds:.0f}s in all")

    rows = []
    for p in problems:
        for sched in schedules:
            grid = {lr: [accuracy[p, sched, s, lr, epochs] for s in seeds] for lr in PROBLEMS[p][2]}
            best_lr = max(grid, key=lambda lr: _mean(grid[lr]))
            best = _mean(grid[best_lr])
            rules = {}
            for rule in RULES:
                accs = [accuracy[p, sched, s, finds[p, s]["rules"][rule], epochs] if finds[p, s]["rules"] else 0.0
                        for s in seeds]
                lrs = [finds[p, s]["rules"].get(rule, math.nan) for s in seeds]
                gaps = [100 * (b - a) for a, b in zip(accs, grid[best_lr])]  # paired by seed
                rules[rule] = {"accuracy": _mean(accs), "per_seed": accs, "gap": _mean(gaps),
                               "gap_se": statistics.stdev(gaps) / math.sqrt(len(gaps)) if len(gaps) > 1 else math.nan,
                               "lr": float(np.exp(np.mean(np.log(lrs))))}
            chosen = [rule_for(sched, finds[p, s]["blew_up"]) for s in seeds]  # per seed: it depends on the curve
            accs = [rules[rule]["per_seed"][i] for i, rule in enumerate(chosen)]
            gaps = [100 * (b - a) for a, b in zip(accs, grid[best_lr])]
            sure = [g for g, s in zip(gaps, seeds) if finds[p, s]["confident"]]  # where lr-find said "confident"
            rules["default"] = {"accuracy": _mean(accs), "per_seed": accs, "gap": _mean(gaps), "rules": chosen,
                                "gap_se": statistics.stdev(gaps) / math.sqrt(len(gaps)) if len(gaps) > 1 else math.nan,
                                "confident_gap": _mean(sure) if sure else None}
            rows.append({"problem": p, "schedule": sched, "grid_best_lr": best_lr, "grid_best": best,
                         "grid": {f"{lr:.2e}": _mean(v) for lr, v in grid.items()},
                         "grid_per_seed": {f"{lr:.2e}": v for lr, v in grid.items()}, "rules": rules,
                         "confident": [finds[p, s]["confident"] for s in seeds],
                         "reasons": [finds[p, s]["reasons"] for s in seeds]})
    worst = {rule: max(r["rules"][rule]["gap"] for r in rows) for rule in [*RULES, "default"]}
    best_rule = min(RULES, key=worst.get)
    misses = [f"{r['problem']}/{r['schedule']}" for r in rows if r["rules"]["default"]["gap"] > TARGET]
    # a confident miss: on the seeds where lr-find said "confident", its suggestion trails the grid's best lr (on
    # the same seeds) by more than the target, on average
    confident_misses = [f"{r['problem']}/{r['schedule']}" for r in rows
                        if (r["rules"]["default"]["confident_gap"] or 0.0) > TARGET]
    report = {"seeds": seeds, "epochs": epochs or "per problem", "quick": args.quick, "seconds": seconds,
              "runs": len(jobs), "rows": rows,
              "default_rule": {**{s: rule_for(s) for s in schedules}, "no blow-up": rule_for("constant", False)},
              "worst_gap": worst, "best_rule": best_rule, "default_worst_gap": worst["default"], "misses": misses,
              "confident_misses": confident_misses,
              "verdict_gap": verdict(worst["default"], TARGET, higher=False),
              "verdict_confidence": verdict(len(confident_misses), 0, higher=False, shown="{:.0f}".format)}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    _print(report)
    return 0


def _print(report: dict[str, Any]) -> None:
    names = list(RULES)
    width = {n: max(len(n), 14) for n in names}
    rows = report["rows"]
    print(f"\ntest accuracy (%), mean over seeds {report['seeds']} (gap to the grid's best, points); default: "
          f"{', '.join(f'{s}: {r}' for s, r in report['default_rule'].items())} (gap ± its standard error); "
          f"confident: seeds where lr-find said so")
    print(f"{'problem':<15} {'schedule':<8} {'grid best':>16} " + " ".join(f"{n:>{width[n]}}" for n in names)
          + f" {'default':>22} confident")
    for r in rows:
        cells = " ".join(f"{100 * r['rules'][n]['accuracy']:>{width[n] - 9}.2f} ({r['rules'][n]['gap']:+6.2f})"
                         for n in names)
        d = r["rules"]["default"]
        print(f"{r['problem']:<15} {r['schedule']:<8} {100 * r['grid_best']:>6.2f} @ {r['grid_best_lr']:.1e} {cells} "
              f"{100 * d['accuracy']:>8.2f} ({d['gap']:+5.2f} ± {d['gap_se']:.2f}) "
              f"{sum(r['confident'])}/{len(r['confident'])}"
              + (f" (gap {d['confident_gap']:+.2f})" if d["confident_gap"] is not None else ""))
    print(f"{'worst gap':<42}" + " ".join(f"{report['worst_gap'][n]:>{width[n]}.2f}" for n in names)
          + f" {report['worst_gap']['default']:>22.2f}")
    print(f"\nlr (geometric mean over seeds)")
    for r in rows[::len(report["default_rule"]) - 1]:
        print(f"{r['problem']:<42}" + " ".join(f"{r['rules'][n]['lr']:>{width[n]}.2e}" for n in names))
    print(f"\nbest single rule here: {report['best_rule']} (worst gap {report['worst_gap'][report['best_rule']]:.2f} "
          f"points)")
    print(f"dltune's default: worst gap {report['default_worst_gap']:.2f} points (target <= {TARGET}): "
          f"{report['verdict_gap']}")
    print(f"  misses over {TARGET} points: {', '.join(report['misses']) or 'none'}")
    print(f"  confident on a miss: {', '.join(report['confident_misses']) or 'none'}: {report['verdict_confidence']}")
    print(f"{report['runs']} training runs in {report['seconds']:.0f}s")


if __name__ == "__main__":
    sys.exit(main())
