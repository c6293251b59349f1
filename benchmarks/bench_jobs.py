"""Ablation throughput: the demo's 24 runs with --jobs 1 (all threads) and --jobs 2 (half the threads each),
beside the limit that the training loop's thread scaling sets, measured in the same rounds.

The 24 runs are the demo's ablation (`make demo`: examples/seed_mnist.toml, its 8 variants over 3 seeds), run
through dltune.study.ablate.ablate in a fresh process and output folder each time, so that every measurement
includes what a user waits for once dltune is imported: worker start-up (the workers import torch), data loading,
training, evaluation, run folders and storage. The two settings
alternate for --rounds rounds; medians are reported. Results are compared per (variant, seed): the pool gives those
of --jobs 1 on the same threads (tests/test_pool.py), but --jobs 1 trains on 2 threads and --jobs 2 on 1, and torch
may split a kernel's float sums by the thread count (batch-256 differs in the last bits on 2 cores).

The limit: in each round, one run of the reference experiment (the baseline) is trained on 1 and on 2 torch
threads (samples/s of its training loop: sps_1thread, sps_2threads). Two 1-thread jobs can at best have
limit = 2 x sps_1thread / sps_2threads times the throughput of one 2-thread job, if nothing else is lost;
ratio_of_limit = ratio / limit says how much of that the pool keeps. (On more than 2 cores, "1 thread" and
"2 threads" read as the threads of one job of --jobs 2 and all threads.)

Run:  .venv/bin/python benchmarks/bench_jobs.py [--json] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from _verdict import verdict

from dltune.experiment.config import ExperimentConfig, load_config, override
from dltune.study.ablate import ablate
from dltune.run.runtime import cores as available_cores
from dltune import train

CONFIG = Path(__file__).resolve().parent.parent / "examples" / "seed_mnist.toml"
SEEDS = 3  # the demo's: 8 variants x 3 seeds = 24 runs
TARGET = 0.9  # ratio_of_limit


def experiment(quick: bool) -> ExperimentConfig:
    """The demo's ablation; --quick: 2 epochs a run instead of 10 (for developing, not for numbers)."""
    config = load_config(CONFIG)
    return override(config, {"train.epochs": 2}) if quick else config


def one(quick: bool, jobs: int, threads: int) -> tuple[float, int, dict[tuple[str, int], tuple]]:
    """Wall seconds of the ablation, its number of runs, and each run's (test metrics, train loss per epoch).

    Measured in a fresh process (after its imports), as a command would run: --jobs 2 pays for starting its
    workers, which import torch, every time, not once per benchmark."""
    child = subprocess.run([sys.executable, __file__, "--one", str(jobs), "--threads", str(threads)]
                           + ["--quick"] * quick, capture_output=True, text=True, check=True)
    measured = json.loads(child.stdout)
    results = {(variant, seed): (test, losses) for variant, seed, test, losses in measured["results"]}
    return measured["seconds"], len(results), results


def _one_here(quick: bool, jobs: int, threads: int) -> None:
    """In the child: time the ablation and print it with every run's results as JSON."""
    config = experiment(quick)
    if jobs == 1:
        config = override(config, {"parallel.threads": threads})
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        data = ablate(config, out_dir=out, jobs=jobs, seeds=SEEDS)
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "results": [
        (r.variant, r.seed, r.test, [e["train"]["loss"] for e in r.epochs]) for r in data.results]}))


def loop_speed(config: ExperimentConfig, threads: int) -> float:
    """Samples/s of the training loop of one run of the reference experiment on `threads` torch threads."""
    baseline = override(config, {"ablation.variants": {}, "parallel.threads": threads})
    return train(baseline).samples_per_second


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only a JSON document")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 epochs a run: for developing, not for numbers")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # in a child: one ablation with --jobs ONE
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a script's choice: dltune leaves it as found
    if args.one is not None:
        _one_here(args.quick, args.one, args.threads)
        return 0
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else print
    config = experiment(args.quick)
    cores = available_cores()  # as ablate divides them
    half = max(1, cores // 2)  # the threads of each of --jobs 2 (ablate divides the cores)
    times: dict[int, list[float]] = {1: [], 2: []}
    speeds: dict[int, list[float]] = {half: [], cores: []}
    outcomes: dict[int, dict] = {}
    runs = 0
    for r in range(args.rounds):
        for jobs in ((1, 2) if r % 2 == 0 else (2, 1)):  # alternate which goes first
            seconds, runs, outcomes[jobs] = one(args.quick, jobs, cores)
            times[jobs].append(seconds)
        for threads in speeds:
            speeds[threads].append(loop_speed(config, threads))
        log(f"round {r + 1}/{args.rounds}: jobs 1 {times[1][-1]:.1f}s, jobs 2 {times[2][-1]:.1f}s; loop "
            + ", ".join(f"{speeds[t][-1]:,.0f} samples/s on {t} thread{'s' * (t > 1)}" for t in speeds))
    per_hour = {j: runs * 3600 / statistics.median(t) for j, t in times.items()}
    sps_1thread, sps_2threads = statistics.median(speeds[half]), statistics.median(speeds[cores])
    limit = 2 * sps_1thread / sps_2threads
    ratio = per_hour[2] / per_hour[1]
    identical = outcomes[1] == outcomes[2]
    differing = [f"{variant}/seed-{seed}" for (variant, seed), result in outcomes[1].items()
                 if outcomes[2].get((variant, seed)) != result]
    report = {"runs": runs, "rounds": args.rounds, "quick": args.quick, "cores": cores,
              "jobs1_runs_per_hour": per_hour[1], "jobs2_runs_per_hour": per_hour[2], "ratio": ratio,
              "sps_1thread": sps_1thread, "sps_2threads": sps_2threads, "limit": limit,
              "ratio_of_limit": ratio / limit, "identical_results": identical, "differing_runs": differing}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{runs} runs of the demo's ablation{' (--quick: 2 epochs)' if args.quick else ''}, "
          f"{args.rounds} rounds (medians), {cores} cores")
    print(f"  --jobs 1, {cores} threads: {per_hour[1]:,.0f} runs/hour ({statistics.median(times[1]):.1f}s)")
    print(f"  --jobs 2, {half} thread{'s' * (half > 1)} each: {per_hour[2]:,.0f} runs/hour "
          f"({statistics.median(times[2]):.1f}s); ratio {ratio:.2f}")
    print(f"  training loop: {sps_1thread:,.0f} samples/s on {half} thread{'s' * (half > 1)}, "
          f"{sps_2threads:,.0f} on {cores}; limit 2 x {sps_1thread:,.0f} / {sps_2threads:,.0f} = {limit:.2f}")
    print(f"  ratio_of_limit {ratio / limit:.2f} (target >= {TARGET}): "
          f"{verdict(ratio / limit, TARGET)}")
    if not identical:  # torch may split a kernel's sums by the thread count: 2 threads against 1
        print(f"  results differ between the two for {len(differing)} of {runs} runs: {', '.join(differing)}")
    else:
        print("  results identical per (variant, seed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
