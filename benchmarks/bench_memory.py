"""Peak memory of a search by its length: the peak RSS of `dltune tune` after 20, 60 and 200 short trials.

Each trial trains a small MLP for 2 epochs on mnist-5k under ASHA (a rung at epoch 1, η = 3), so a long search
churns as the reference search does: every epoch allocates and frees a shuffled copy of the training set, each trial
builds and frees a model, and up to search.max_paused trials wait at the rung at once. Each length runs in a fresh
process and output folder; the peak is the kernel's (ru_maxrss of the waited-for process, which covers the processes
it waited for: its --jobs). A search whose memory stays flat peaks at about the same RSS however long it runs
(make stress checks 200 trials against 20: at most 1.2x).

Run:  .venv/bin/python benchmarks/bench_memory.py [--trials 20 60 200] [--jobs 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def experiment(trials: int) -> dict:
    """Short trials (about a second each) that pause at a rung."""
    return {"data": {"name": "mnist-5k"}, "model": {"hidden": [128]}, "batch": {"size": 100}, "train": {"epochs": 2},
            "search": {"trials": trials, "sampler": "random", "pruner": "asha", "min_epochs": 1,
                       "reduction_factor": 3,
                       "space": {"optim.lr": {"low": 1e-4, "high": 3e-2, "log": True},
                                 "schedule.name": ["constant", "cosine"]}}}


def peak_rss_mib(args: list[str], log: Path, timeout: float = 3600) -> tuple[float, int]:
    """The peak RSS in MiB of `dltune ARGS` run in a process of its own, and its exit code (its output in `log`)."""
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dltune", *args], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    return usage.ru_maxrss / 1024, proc.returncode


def search_peak(trials: int, folder: Path, jobs: int = 1) -> float:
    """The peak RSS in MiB of a search of `trials` short trials in `folder`; raises if the search failed."""
    import tomli_w

    config = folder / "short.toml"
    config.write_text(tomli_w.dumps(experiment(trials)))
    log = folder / f"tune-{trials}.log"
    peak, code = peak_rss_mib(["tune", str(config), "--trials", str(trials), "--jobs", str(jobs),
                               "--out", str(folder / f"out-{trials}"), "--json"], log)
    if code != 0:
        raise RuntimeError(f"dltune tune of {trials} trials: exit code {code}\n{log.read_text()[-3000:]}")
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[20, 60, 200])
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    peaks = {}
    for trials in args.trials:
        with tempfile.TemporaryDirectory() as tmp:
            peaks[trials] = search_peak(trials, Path(tmp), args.jobs)
        print(f"{trials:5d} trials: peak RSS {peaks[trials]:6.0f} MiB "
              f"({peaks[trials] / peaks[args.trials[0]]:.2f}x of {args.trials[0]} trials)", flush=True)


if __name__ == "__main__":
    main()
