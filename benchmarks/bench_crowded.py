"""Threads under load: how fast the reference run trains on torch's 2 threads and on 1 while other processes hold
the cores, and whether dltune's warning (runtime.crowding) says so before it trains.

`--busy N` processes spin on the CPU (a Python busy loop each) for the whole benchmark; after `--settle` seconds (the
1-minute load average needs time to rise) it runs `dltune train examples/seed_mnist.toml` for `--epochs` epochs with
parallel.threads = 2 and = 1, alternating, `--rounds` times each, in fresh processes. It prints the samples/s of each
run, their medians and ratio, and whether each run printed the load warning (it should for 2 threads, not for 1).
The test accuracy of the two is the same run's up to float order (printed too). The machine's own other load counts.

Run:  .venv/bin/python benchmarks/bench_crowded.py [--busy 3] [--settle 75] [--rounds 2] [--epochs 3] [--json]
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

ROOT = Path(__file__).resolve().parent.parent
WARNING = "warning: the load average is "


def train(threads: int, epochs: int, out: Path) -> dict:
    r = subprocess.run([sys.executable, "-m", "dltune", "train", str(ROOT / "examples" / "seed_mnist.toml"), "--set",
                        f"train.epochs={epochs}", "--set", f"parallel.threads={threads}", "--out", str(out), "--json"],
                       capture_output=True, text=True, cwd=ROOT, timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"dltune train failed: {r.stderr.strip()[-500:]}")
    doc = json.loads(r.stdout)
    return {"threads": threads, "samples_per_second": doc["samples_per_second"], "accuracy": doc["test"]["accuracy"],
            "warned": any(line.startswith(WARNING) for line in r.stderr.splitlines())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=3, help="processes that spin on the CPU meanwhile")
    parser.add_argument("--settle", type=float, default=75.0, help="seconds to let the load average rise")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        time.sleep(args.settle)
        load = Path("/proc/loadavg").read_text().split()[:4] if Path("/proc/loadavg").exists() else []
        runs = []
        with tempfile.TemporaryDirectory() as folder:
            for k in range(args.rounds):
                for threads in (2, 1):
                    runs.append(train(threads, args.epochs, Path(folder) / f"run-{k}-{threads}"))
                    if not args.json:
                        print(f"round {k + 1}: {threads} thread{'s' if threads > 1 else ''}: "
                              f"{runs[-1]['samples_per_second']:,.0f} samples/s, test accuracy "
                              f"{runs[-1]['accuracy']:.2%}, warned: {runs[-1]['warned']}", flush=True)
    finally:
        for p in spinners:
            p.kill()
    median = {t: statistics.median(r["samples_per_second"] for r in runs if r["threads"] == t) for t in (2, 1)}
    result = {"busy": args.busy, "loadavg_before": load, "runs": runs, "sps_2threads": median[2],
              "sps_1thread": median[1], "ratio_1_over_2": median[1] / median[2],
              "warned_2threads": all(r["warned"] for r in runs if r["threads"] == 2),
              "warned_1thread": any(r["warned"] for r in runs if r["threads"] == 1)}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"load before the runs (/proc/loadavg): {' '.join(load)}; {args.busy} busy processes")
    print(f"medians: 2 threads {median[2]:,.0f} samples/s, 1 thread {median[1]:,.0f}: 1 thread is "
          f"{result['ratio_1_over_2']:.1f}x faster; warned on every 2-thread run: {result['warned_2threads']}, on a "
          f"1-thread run: {result['warned_1thread']}")


if __name__ == "__main__":
    main()
