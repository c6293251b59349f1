"""Ensembles of a search's best trials against its best single trial: the test accuracy the top 5 add, and what
building the ensemble costs beside the search.

What is measured:

* The reference search (examples/tune_mnist.toml: mnist-5k, the MLP, its [search.space], TPE, val.accuracy) runs
  --trials trials with search.seed set to each of --seeds search seeds (0, 1, 2). Its pruner is set to "none":
  an ensemble's members must be fully trained, and with ASHA a 24-trial search completes too few trials for a top 5
  (most stop at the rungs of epochs 1 and 4).
* `dltune.ensemble` then combines the --top trials best on validation by greedy ensemble selection, fitted on the
  validation split and judged on the test split against the best single member (the one best on validation).
  ensemble_gain_points is the ensemble's test accuracy minus the best single's, in points; per seed it carries its
  95% paired bootstrap interval. Means over the search seeds, with their std and n.
* ensemble_seconds is the wall time of the greedy `ensemble` call (loading the members, predicting, fitting,
  evaluating, writing its folder); search_seconds the wall time of `tune`. ensemble_search_ratio is the mean of the
  one over the mean of the other.
* Every other method in dltune.ensembles.METHODS runs on the same searches, for the table of methods; a soup needs
  members of one architecture, and where the top trials differ in model.hidden it does not apply (n counts the seeds
  where it did). The targets are judged on greedy: a gain of >= 0.5 points, and ensembling in <= 5% of the search's
  time.

Run:  .venv/bin/python benchmarks/bench_ensemble.py [--json] [--seeds 3] [--trials 24] [--top 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from _verdict import verdict

from dltune.experiment.config import load_config, override
from dltune.ensembles import METHODS, ensemble
from dltune.errors import ConfigError
from dltune.study.tune import tune

CONFIG = Path(__file__).resolve().parent.parent / "examples" / "tune_mnist.toml"
JUDGED = "greedy"
TARGET_GAIN = 0.5  # accuracy points, ensemble minus best single, mean over search seeds
TARGET_SHARE = 0.05  # ensemble seconds per search second


def search(seed: int, trials: int, out: Path) -> dict[str, Any]:
    """The reference search with full training into `out`: its seconds and how many trials completed."""
    config = override(load_config(CONFIG), {"search.pruner": "none", "search.seed": seed, "search.trials": trials})
    start = time.perf_counter()
    data = tune(config, out_dir=out)
    seconds = time.perf_counter() - start
    return {"search_seconds": seconds, "completed_trials": sum(t.state == "COMPLETE" for t in data.trials)}


def combined(source: Path, out: Path, top: int, method: str) -> dict[str, Any]:
    """One ensemble of the search in `source`, measured; {"skipped": why} where the method does not apply."""
    start = time.perf_counter()
    try:
        r = ensemble(source, out, top=top, method=method)
    except ConfigError as e:
        if method.endswith("soup"):  # members of different architectures: no soup to make
            return {"skipped": str(e)}
        raise
    return {"best_single": r.best_single["name"], "best_single_accuracy": r.best_single["test"]["accuracy"],
            "ensemble_accuracy": r.test["accuracy"], "ensemble_gain_points": r.difference["difference"],
            "ci_low": r.difference["ci_low"], "ci_high": r.difference["ci_high"],
            "ensemble_seconds": time.perf_counter() - start,
            "weights": {m["name"]: m["weight"] for m in r.members if m["weight"] > 0}}


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def _pm(mean: float | None, std: float | None, spec: str = "+.2f") -> str:
    if mean is None:
        return "n/a"
    return f"{mean:{spec}}" + ("" if std is None else f" ± {std:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only a JSON document")
    parser.add_argument("--seeds", type=int, default=3, help="search seeds 0..N-1 (default: %(default)s)")
    parser.add_argument("--trials", type=int, default=24, help="trials per search (default: %(default)s)")
    parser.add_argument("--top", type=int, default=5, help="members: the best on validation (default: %(default)s)")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a script's choice: dltune leaves Optuna's logging as found
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else print
    methods = [JUDGED] + [m for m in METHODS if m != JUDGED]  # greedy first: it bears any first-call cost
    start = time.perf_counter()
    per_seed: list[dict[str, Any]] = []
    by_method: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            source = Path(tmp) / f"search-{seed}"
            found = search(seed, args.trials, source)
            log(f"seed {seed}: {found['completed_trials']} of {args.trials} trials completed, "
                f"search {found['search_seconds']:.0f}s")
            for method in methods:
                row = combined(source, Path(tmp) / f"ensemble-{seed}-{method}", args.top, method)
                by_method[method].append(row)
                if "skipped" in row:
                    log(f"seed {seed} {method:>12}: does not apply ({row['skipped'].split(';')[0]})")
                    continue
                log(f"seed {seed} {method:>12}: best single {row['best_single']} {row['best_single_accuracy']:.2%}, "
                    f"ensemble {row['ensemble_accuracy']:.2%}, gain {row['ensemble_gain_points']:+.2f} points "
                    f"[{row['ci_low']:+.2f}, {row['ci_high']:+.2f}], {row['ensemble_seconds']:.1f}s")
            judged = by_method[JUDGED][-1]
            per_seed.append({"seed": seed, **found, **judged,
                             "ensemble_search_ratio": judged["ensemble_seconds"] / found["search_seconds"]})

    def mean_of(key: str) -> float:
        return statistics.mean(s[key] for s in per_seed)

    gain, gain_std = _mean_std([s["ensemble_gain_points"] for s in per_seed])
    report: dict[str, Any] = {
        "method": JUDGED, "trials": args.trials, "top": args.top, "seeds": args.seeds, "pruner": "none",
        "best_single_accuracy": mean_of("best_single_accuracy"), "ensemble_accuracy": mean_of("ensemble_accuracy"),
        "ensemble_gain_points": gain, "ensemble_gain_points_std": gain_std,
        "ensemble_seconds": mean_of("ensemble_seconds"), "search_seconds": mean_of("search_seconds"),
        "ensemble_search_ratio": mean_of("ensemble_seconds") / mean_of("search_seconds"),
        "per_seed": per_seed, "methods": {},
    }
    for method, rows in by_method.items():
        done = [r for r in rows if "skipped" not in r]
        m, s = _mean_std([r["ensemble_gain_points"] for r in done])
        report["methods"][method] = {
            "ensemble_gain_points": m, "ensemble_gain_points_std": s, "n": len(done),
            "ensemble_accuracy": statistics.mean(r["ensemble_accuracy"] for r in done) if done else None,
            "ensemble_seconds": statistics.mean(r["ensemble_seconds"] for r in done) if done else None,
            "per_seed_gain_points": [r.get("ensemble_gain_points") for r in rows],
            "skipped": [r["skipped"] for r in rows if "skipped" in r]}
    report["verdict_gain"] = verdict(gain, TARGET_GAIN)
    report["verdict_time"] = verdict(report["ensemble_search_ratio"], TARGET_SHARE, higher=False,
                                     shown="{:.2%}".format)
    report["seconds"] = time.perf_counter() - start
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.trials} trials per search (TPE, no pruning), top {args.top} by val.accuracy, {args.seeds} search "
          f"seeds (mean ± std)")
    print(f"  best single (by val) {report['best_single_accuracy']:.2%}, greedy ensemble "
          f"{report['ensemble_accuracy']:.2%}")
    print(f"  {'method':<14}{'gain (points)':<16}{'n':>3}{'seconds':>10}")
    for method, row in report["methods"].items():
        seconds = "" if row["ensemble_seconds"] is None else f"{row['ensemble_seconds']:.1f}"
        print(f"  {method:<14}{_pm(row['ensemble_gain_points'], row['ensemble_gain_points_std']):<16}"
              f"{row['n']:>3}{seconds:>10}")
    print(f"  greedy gain {_pm(gain, gain_std)} points (target >= {TARGET_GAIN}): {report['verdict_gain']}")
    print(f"  ensemble {report['ensemble_seconds']:.1f}s / search {report['search_seconds']:.0f}s = "
          f"{report['ensemble_search_ratio']:.2%} (target <= {TARGET_SHARE:.0%}): {report['verdict_time']}")
    print(f"{report['seconds']:.0f}s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
