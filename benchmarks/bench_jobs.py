"""Ablation throughput: the same 8 runs with --jobs 1 (2 threads) and --jobs 2 (1 thread each).

The 8 runs are the reference experiment (examples/seed_mnist.toml, without its variants) with seeds
1..8, run through dltune.ablate.ablate into a fresh output folder each time, so that every
measurement includes what a user waits for: process start-up, data loading, training, evaluation
and storage. The two settings alternate for --rounds rounds; medians are reported, with runs per
hour of each and their ratio. Results must be identical per (variant, seed) between the two.

Run:  .venv/bin/python benchmarks/bench_jobs.py [--json] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from dltune.ablate import ablate
from dltune.config import load_config, override

CONFIG = Path(__file__).resolve().parent.parent / "examples" / "seed_mnist.toml"
RUNS = 8


def one(jobs: int, threads: int | None) -> tuple[float, dict[tuple[str, int], tuple]]:
    """Wall seconds of the 8 runs, and each run's (test metrics, last train loss)."""
    config = override(load_config(CONFIG), {"ablation.variants": {}, "ablation.seeds": RUNS})
    if threads is not None:
        config = override(config, {"parallel.threads": threads})
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        data = ablate(config, out_dir=out, jobs=jobs)
        seconds = time.perf_counter() - start
    results = {(r.variant, r.seed): (r.test, r.epochs[-1]["train"]["loss"]) for r in data.results}
    assert len(results) == RUNS
    return seconds, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only a JSON document")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else print
    cores = torch.get_num_threads()
    times: dict[int, list[float]] = {1: [], 2: []}
    outcomes: dict[int, dict] = {}
    for r in range(args.rounds):
        for jobs in ((1, 2) if r % 2 == 0 else (2, 1)):  # alternate which goes first
            seconds, outcomes[jobs] = one(jobs, cores if jobs == 1 else None)
            times[jobs].append(seconds)
        log(f"round {r + 1}/{args.rounds}: jobs 1 {times[1][-1]:.1f}s, jobs 2 {times[2][-1]:.1f}s")
    per_hour = {j: RUNS * 3600 / statistics.median(t) for j, t in times.items()}
    identical = outcomes[1] == outcomes[2]
    report = {"jobs1_runs_per_hour": per_hour[1], "jobs2_runs_per_hour": per_hour[2],
              "ratio": per_hour[2] / per_hour[1], "identical_results": identical}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{RUNS} runs of the reference experiment, {args.rounds} rounds (medians), {cores} cores")
    print(f"  --jobs 1, {cores} threads: {per_hour[1]:,.0f} runs/hour ({statistics.median(times[1]):.1f}s)")
    print(f"  --jobs 2, {max(1, cores // 2)} thread each: {per_hour[2]:,.0f} runs/hour "
          f"({statistics.median(times[2]):.1f}s)")
    print(f"  ratio {report['ratio']:.2f} (target >= 1.6): {'met' if report['ratio'] >= 1.6 else 'NOT met'}")
    if not identical:
        diff = [k for k in outcomes[1] if outcomes[1][k] != outcomes[2].get(k)]
        print(f"  results differ between the two for {len(diff)} of {RUNS} runs: {diff}")
    else:
        print("  results identical per (variant, seed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
