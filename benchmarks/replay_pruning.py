"""ASHA with and without its rank check and witnesses, replayed on the learning curves of bench_suite's full
searches: the choice of `dltune.study.rank_check.RANK_P` and `dltune.study.asha.WITNESS_EVERY`.

A full search trains every trial to the end, so its trials' validation curves say what any pruner would have seen.
`rank_check.replay` runs the search loop's decisions (one worker) on those trials in their order, and the trial it
ends with is judged by its test metric against the full search's best (by validation), in points, and by the
epochs it trained against the full search's. The trials are the ones TPE proposed under the full budget; under
pruning it would have proposed others, so this ranks thresholds, and bench_suite's real searches judge the one
chosen. Choose on some problems (--problems), check on the others.

Run:  .venv/bin/python benchmarks/replay_pruning.py --from suite.json [--alpha 0 0.05 0.1 0.2] [--witness 0 4]
                                                   [--problems ...]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import dltune.study.asha
from dltune.study.rank_check import RANK_PAIRS, replay

def replayed(full: dict[str, Any], alpha: float, factor: int, min_epochs: int) -> tuple[float, float]:
    """(test points of the trial the replay ends with - the full search's, epochs / the full search's epochs);
    `alpha` 0: ASHA without the check."""
    trials = sorted(full["trials"], key=lambda t: t["number"])
    curves = [[v if math.isfinite(v) else -math.inf for v in t["curve"]] for t in trials]
    if len({len(c) for c in curves}) != 1:  # a trial that diverged has a short curve: it would have failed
        longest = max(map(len, curves))
        curves = [c + [-math.inf] * (longest - len(c)) for c in curves]
    run = replay(curves, factor=factor, min_epochs=min_epochs, checks=alpha > 0, alpha=alpha, min_pairs=RANK_PAIRS)
    test = trials[run.best]["test"] if run.best is not None else None
    return (100 * test - full["points"] if test is not None else -math.inf), run.epochs / full["epochs"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="sources", required=True, nargs="+", metavar="JSON",
                        help="bench_suite.py --out's files (their full searches pooled)")
    parser.add_argument("--alpha", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2],
                        help="the rank check's one-sided p thresholds to replay (0: no check, plain ASHA)")
    parser.add_argument("--witness", type=int, nargs="+", default=[0, 4],
                        help="asha.WITNESS_EVERY values to replay (0: promotions from the top alone)")
    parser.add_argument("--factor", type=int, nargs="+", default=[4], help="search.reduction_factor values (η)")
    parser.add_argument("--min-epochs", type=int, nargs="+", default=[1], help="search.min_epochs values")
    parser.add_argument("--problems", nargs="+", metavar="NAME", help="only these problems")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    suite: dict[str, list[dict[str, Any]]] = {}
    for source in args.sources:
        for name, result in json.loads(Path(source).read_text())["search"]["problems"].items():
            suite.setdefault(name, []).extend(result["runs"]["full"])
    names = [n for n in suite if not args.problems or n in args.problems]
    arms = [(w, a, f, m) for f in args.factor for m in args.min_epochs for w in args.witness for a in args.alpha]
    rows: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for name in names:
        rows[name] = {}
        for w, a, f, m in arms:
            dltune.study.asha.WITNESS_EVERY = w
            rows[name][f"η {f} min {m} w {w} p<{a}"] = [replayed(full, a, f, m) for full in suite[name]]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"replayed on the full searches' curves: mean test points against the full search's best (worst seed) / "
          f"mean epoch ratio; the rank check on at least {RANK_PAIRS} pairs")
    arm_names = list(rows[names[0]])
    print(f"{'η, min_epochs, witness, p':<22}" + "".join(f"{n[:17]:>24}" for n in names) + f"{'worst / median':>18}")
    for arm in arm_names:
        runs = {n: rows[n][arm] for n in names}
        means = {n: statistics.fmean(p for p, _ in r) for n, r in runs.items()}
        ratios = {n: statistics.fmean(e for _, e in r) for n, r in runs.items()}
        cells = [f"{means[n]:+.2f} ({min(p for p, _ in runs[n]):+.2f}) / {ratios[n]:.2f}" for n in names]
        print(f"{arm:<22}" + "".join(f"{c:>24}" for c in cells)
              + f"{min(means.values()):>+10.2f} / {statistics.median(ratios.values()):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
