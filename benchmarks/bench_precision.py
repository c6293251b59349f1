"""train.precision: training speed and test accuracy of fp32 against bf16 (and fp16 where the device has it), on three
models, and model.channels_last on the CNN.

What is measured: real dltune runs, dltune.train(config), of examples/seed_mnist.toml (mnist-5k: 3,600 training and
1,000 test examples; Adam lr 1e-3, constant) with these overrides, for --epochs epochs (default 5):

* reference-mlp: the file as it is, MLP 784-500-10, batch 100;
* wide-mlp: model.hidden = [4096] (MLP 784-4096-10), batch 256;
* cnn: model.name = "cnn" (conv 1->32 and 32->64, 3x3, each with ReLU and 2x2 max pooling, dense 3136-128-10),
  batch 100 (at 128, fp32's convolutions on this CPU ran about a quarter slower per example than at 100, which would
  flatter bf16);
* cnn-channels-last: the cnn with model.channels_last = true (weights and batches in NHWC).

Each model trains in every precision that dltune accepts on the device (fp32 and bf16 on a CPU with AVX-512 or AMX;
fp16 where torch has fast kernels for it, on CUDA), with train.seed = 1 .. --seeds (default 5): the precisions of one
seed and model train with the same seed, one after another, so each seed pairs them. The order alternates: the
precisions rotate by one from seed to seed (fp32, bf16; then bf16, fp32; ...) and the models run in reverse order on
every other seed, so that neither a precision nor a model always goes first (or always meets the same load). Before
them, untimed, one epoch of each model in each precision: the process's first calls (kernel choice, weight reorders).

A run's samples/s is the median of its epochs' training samples/s (dltune's per-epoch record: training examples over
the seconds of the epoch's optimizer steps; evaluation is timed apart and left out): a burst of other work on a
shared machine slows an epoch, not the median. Per model and precision the table gives the median over seeds of
those rates (and their min..max), and x fp32: the median over seeds of the paired ratio (this precision's rate / fp32's
of the same seed). Test accuracy: mean ± std over seeds (dltune's result.test["accuracy"] after the last epoch), and
the paired difference to fp32 in points with its 95% t-interval (scipy.stats.t, n - 1 degrees of freedom) over seeds.
channels_last: the median per-seed ratio of cnn-channels-last's rate to cnn's, in each precision.

The limit for speed, measured in the same run: the peak matmul rate of each precision, 2048x2048 matrices on a CPU
(8192x8192 on CUDA, where 2048 is too small to fill the card), best of 5 after 2 warm-ups, once per seed before the
seed's runs; its median per-seed ratio to fp32 is what a model made only of such matmuls could gain.

Targets (the issue's, for this CPU; on CUDA the same verdicts are printed for each reduced precision):
* accuracy, per model: bf16 reaches fp32's test accuracy within the seeds' noise: the paired 95% interval holds 0,
  or the mean difference is within 0.3 points;
* speed: bf16 >= 1.3x fp32 on the CNN (either memory order) or the wide MLP; the verdict names the matmul ratio as
  the limit. The reference MLP is reported as it is: bf16 may be slower there.

Run:  .venv/bin/python benchmarks/bench_precision.py [--epochs 5] [--seeds 5] [--models NAME ...] [--device auto]
      [--threads N] [--quick] [--json] [--out FILE]     (--out benchmarks/results/precision.json keeps the document)
      .venv/bin/python benchmarks/bench_precision.py --from benchmarks/results/precision.json   (its table, no runs)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _verdict import verdict
from scipy import stats

from dltune import train
from dltune.experiment.config import ExperimentConfig, load_config, override
from dltune.run.precision import DTYPES, unsupported
from dltune.run.runtime import cores, device_for
from dltune.strict_json import json_ready

CONFIG = Path(__file__).resolve().parent.parent / "examples" / "seed_mnist.toml"
CNN = {"model.name": "cnn", "batch.size": 100}  # channels (32, 64), 3x3 kernels, max pooling, head (128,): defaults
MODELS: dict[str, tuple[str, dict[str, Any]]] = {  # name -> (what it is, its overrides of seed_mnist.toml)
    "reference-mlp": ("MLP 784-500-10, batch 100", {}),
    "wide-mlp": ("MLP 784-4096-10, batch 256", {"model.hidden": [4096], "batch.size": 256}),
    "cnn": ("CNN 32-64 + 128, batch 100", CNN),
    "cnn-channels-last": ("the CNN, channels_last", {**CNN, "model.channels_last": True}),
}
FAST_CANDIDATES = ("wide-mlp", "cnn", "cnn-channels-last")  # where the speed target may be met
TARGETS = {"speedup": 1.3, "accuracy_points": 0.3}
QUICK = {"epochs": 2, "seeds": 2}


# --- measuring ---------------------------------------------------------------------------------
def machine(device: torch.device) -> dict[str, Any]:
    """What the numbers ran on: the CPU's name and its AVX-512 and AMX flags (what bf16 and fp16 kernels need),
    the card on CUDA, torch's version and threads, the load average."""
    cpu = platform.processor() or platform.machine()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        cpu = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.SubprocessError, StopIteration):
        pass
    try:
        flags = next(line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = []
    return {"device": str(device), "card": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "cpu": cpu, "cpu_flags": sorted(f for f in set(flags) if f.startswith(("avx512", "amx"))),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "cores": cores(),
            "load_average_before": os.getloadavg()[0]}


def matmul_gflops(device: torch.device, dtype: torch.dtype, n: int, warmup: int = 2, reps: int = 5) -> float:
    """The best rate of an n x n matmul in `dtype` on `device`, GFLOP/s (2 n^3 FLOPs each)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        torch.matmul(a, b)
    best = math.inf
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        torch.matmul(a, b)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


def one_run(base: ExperimentConfig, model: str, precision: str, seed: int, epochs: int, device: str,
            threads: int | None) -> dict[str, Any]:
    """One dltune run of `model` in `precision`: its rate (the median epoch's), test accuracy, fp16's skipped steps."""
    config = override(base, {**MODELS[model][1], "train.precision": precision, "train.seed": seed,
                             "train.epochs": epochs, "train.device": device, "parallel.threads": threads})
    result = train(config)
    epoch_rates = [e["samples_per_second"] for e in result.epochs]
    return {"model": model, "precision": precision, "seed": seed,
            "samples_per_second": statistics.median(epoch_rates),
            "epoch_samples_per_second": epoch_rates,
            "run_samples_per_second": result.samples_per_second,  # over all epochs' training seconds
            "test_accuracy": result.test["accuracy"],
            "skipped_steps": sum(e["train"].get("skipped_steps", 0) for e in result.epochs),  # fp16 overflows
            "epochs": len(result.epochs)}


def rotated(items: list[str], k: int) -> list[str]:
    k %= len(items)
    return items[k:] + items[:k]


def measure(models: list[str], precisions: list[str], seeds: list[int], epochs: int, device: torch.device,
            threads: int | None, log: Callable[[str], None]) -> dict[str, Any]:
    """Every run and every matmul peak, alternating as the module's docstring says."""
    base = load_config(CONFIG)
    n = 8192 if device.type == "cuda" else 2048
    runs, peaks, loads = [], [], []
    for model in models:  # untimed: torch's and oneDNN's first calls (kernel choice, weight reorders) in this process
        for p in precisions:
            one_run(base, model, p, seeds[0], 1, str(device), threads)
    log("warmed up")
    for i, seed in enumerate(seeds):
        order = rotated(precisions, i)
        loads.append(os.getloadavg()[0])
        peaks.append({p: matmul_gflops(device, DTYPES[p] or torch.float32, n) for p in order})
        log(f"seed {seed}: load average {loads[-1]:.1f}; matmul {n}: "
            + ", ".join(f"{p} {peaks[-1][p]:,.0f}" for p in precisions) + " GFLOP/s")
        for model in models if i % 2 == 0 else models[::-1]:
            for p in order:
                runs.append(one_run(base, model, p, seed, epochs, str(device), threads))
                r = runs[-1]
                log(f"seed {seed} {model:<18} {p}: {r['samples_per_second']:>9,.0f} samples/s, "
                    f"test acc {r['test_accuracy']:.4f}")
    return {"matmul_n": n, "matmul_gflops": peaks, "load_averages": loads, "runs": runs}


# --- summarizing (plain data in, plain data out) -------------------------------------------------
def interval(values: list[float]) -> tuple[float, float, float]:
    """The mean and its 95% t-interval (lo, hi; nan for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """Per model and precision: rates, paired ratios to fp32, accuracies, paired differences; channels_last's ratios;
    the matmul ratios; the verdicts."""
    runs, med = report["runs"], statistics.median
    at = {(r["model"], r["precision"], r["seed"]): r for r in runs}
    seeds, precisions, models = report["seeds"], report["precisions"], report["models"]
    out: dict[str, Any] = {"models": {}}
    for model in models:
        rows = {}
        for p in precisions:
            rates = [at[model, p, s]["samples_per_second"] for s in seeds]
            accs = [at[model, p, s]["test_accuracy"] for s in seeds]
            ratios = [at[model, p, s]["samples_per_second"] / at[model, "fp32", s]["samples_per_second"]
                      for s in seeds]
            diffs = [100 * (at[model, p, s]["test_accuracy"] - at[model, "fp32", s]["test_accuracy"]) for s in seeds]
            mean, lo, hi = interval(diffs)
            rows[p] = {"samples_per_second": med(rates), "samples_per_second_range": [min(rates), max(rates)],
                       "ratio_to_fp32": med(ratios), "ratio_range": [min(ratios), max(ratios)],
                       "accuracy_mean": statistics.fmean(accs),
                       "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else math.nan,
                       "points_vs_fp32": mean, "points_interval": [lo, hi],
                       "skipped_steps": sum(at[model, p, s]["skipped_steps"] for s in seeds)}
        out["models"][model] = rows
    if {"cnn", "cnn-channels-last"} <= set(models):
        out["channels_last_ratio"] = {
            p: med([at["cnn-channels-last", p, s]["samples_per_second"] / at["cnn", p, s]["samples_per_second"]
                    for s in seeds]) for p in precisions}
    peaks = report["matmul_gflops"]
    out["matmul_gflops"] = {p: med([round_[p] for round_ in peaks]) for p in precisions}
    out["matmul_ratio"] = {p: med([round_[p] / round_["fp32"] for round_ in peaks]) for p in precisions}
    out["verdicts"] = verdicts(out, [p for p in precisions if p != "fp32"])
    return out


def accuracy_gap(row: dict[str, Any]) -> float:
    """The difference that the accuracy target judges, in points: 0 where the paired interval holds 0 (the seeds'
    noise covers it), else the mean difference's size."""
    lo, hi = row["points_interval"]
    return 0.0 if lo <= 0 <= hi else abs(row["points_vs_fp32"])  # nan bounds (one seed) compare False


def verdicts(summary: dict[str, Any], reduced: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in reduced:
        accuracy = {m: verdict(accuracy_gap(rows[p]), TARGETS["accuracy_points"], higher=False)
                    for m, rows in summary["models"].items()}
        fast = {m: rows[p]["ratio_to_fp32"] for m, rows in summary["models"].items() if m in FAST_CANDIDATES}
        speed = None
        if fast:
            best = max(fast, key=fast.__getitem__)
            speed = {"best_model": best, "best_ratio": fast[best], "limit": summary["matmul_ratio"][p],
                     "verdict": verdict(fast[best], TARGETS["speedup"], limit=summary["matmul_ratio"][p],
                                        source=f"the matmul peak, {p} / fp32", shown="{:.2f}x".format)}
        out[p] = {"accuracy": accuracy, "speed": speed}
    return out


# --- printing ------------------------------------------------------------------------------------
def points(x: float, f: str = "{:+.2f}") -> str:
    return "n/a" if x is None or not math.isfinite(x) else f.format(x)


def table(report: dict[str, Any]) -> str:
    """The README's table and its notes and verdicts, as GitHub Markdown."""
    m, s = report["machine"], report["summary"]
    where = f"{m['card']} (host CPU: {m['cpu']})" if m["card"] else f"{m['cpu']}, {m['threads']} torch threads"
    lines = [f"**train.precision on {where}**: mnist-5k, {report['epochs']} epochs, seeds "
             f"{report['seeds'][0]}..{report['seeds'][-1]} (n = {len(report['seeds'])}, paired), torch {m['torch']}; "
             f"CPU flags: {' '.join(m['cpu_flags']) or 'no AVX-512 or AMX'}",
             "",
             "| model | precision | samples/s (median [min..max]) | x fp32 | test accuracy (mean ± std) "
             "| − fp32, points [95% interval] |",
             "|---|---|---:|---:|---:|---:|"]
    for model, rows in s["models"].items():
        for p, r in rows.items():
            lo, hi = r["samples_per_second_range"]
            diff = "" if p == "fp32" else (f"{points(r['points_vs_fp32'])} [{points(r['points_interval'][0])}, "
                                           f"{points(r['points_interval'][1])}]")
            ratio = "" if p == "fp32" else f"{r['ratio_to_fp32']:.2f}"
            std = points(None if r["accuracy_std"] is None else 100 * r["accuracy_std"], "{:.2f}")
            lines.append(f"| {model} ({report['settings'][model][0]}) | {p} | {r['samples_per_second']:,.0f} "
                         f"[{lo:,.0f}..{hi:,.0f}] | {ratio} | {100 * r['accuracy_mean']:.2f} ± {std} | {diff} |")
    lines.append("")
    n = report["matmul_n"]
    lines.append(f"- matmul peak, {n}x{n}, same run: " + ", ".join(
        f"{p} {s['matmul_gflops'][p]:,.0f} GFLOP/s" + ("" if p == "fp32" else f" ({s['matmul_ratio'][p]:.2f}x fp32)")
        for p in report["precisions"]))
    if "channels_last_ratio" in s:
        lines.append("- channels_last on the CNN (its rate / the default memory order's, median per seed): "
                     + ", ".join(f"{r:.2f}x in {p}" for p, r in s["channels_last_ratio"].items()))
    for p, rows in ((p, {m: r[p] for m, r in s["models"].items()}) for p in report["precisions"] if p != "fp32"):
        for model, r in rows.items():
            if r["ratio_to_fp32"] < 1:
                why = ": autocast's casts cost more than they save" if model == "reference-mlp" else ""
                lines.append(f"- {p} is slower on the {model} here ({r['ratio_to_fp32']:.2f}x fp32){why}")
        if any(r["skipped_steps"] for r in rows.values()):
            lines.append(f"- {p}: GradScaler steps skipped (overflows), all seeds: "
                         + ", ".join(f"{m} {r['skipped_steps']}" for m, r in rows.items()))
    if report["skipped_precisions"]:
        lines.append("- not run: " + "; ".join(f"{p}: {why}" for p, why in report["skipped_precisions"].items()))
    lines.append(f"- {report['seconds']:.0f} s in all; load average {m['load_average_before']:.1f} before, "
                 f"{m['load_average_after']:.1f} after")
    lines += ["", "targets:"]
    for p, v in s["verdicts"].items():
        for model, text in v["accuracy"].items():
            r = s["models"][model][p]
            lines.append(f"- {p} test accuracy on {model}: {points(r['points_vs_fp32'])} points [95%: "
                         f"{points(r['points_interval'][0])}, {points(r['points_interval'][1])}] (target: the interval "
                         f"holds 0, or within {TARGETS['accuracy_points']} points): {text}")
        if v["speed"] is None:
            lines.append(f"- {p} speed: no CNN or wide MLP in this run")
        else:
            sp = v["speed"]
            lines.append(f"- {p} speed on the CNN or the wide MLP: best {sp['best_ratio']:.2f}x fp32, on "
                         f"{sp['best_model']} (target >= {TARGETS['speedup']}x): {sp['verdict']}")
    return "\n".join(lines)


# --- the command ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="epochs per run (default 5; --quick: 2)")
    parser.add_argument("--seeds", type=int, help="seeds 1..N, paired across precisions (default 5; --quick: 2)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), metavar="NAME",
                        help=f"only these (default: all of {', '.join(MODELS)})")
    parser.add_argument("--device", default="auto", help="train.device: auto (cuda where torch sees one), cpu, cuda")
    parser.add_argument("--threads", type=int, help="torch threads of every run and the matmuls (default: torch's)")
    parser.add_argument("--quick", action="store_true",
                        help=f"development run: {QUICK['epochs']} epochs, {QUICK['seeds']} seeds")
    parser.add_argument("--json", action="store_true", help="print only the JSON document")
    parser.add_argument("--out", metavar="FILE", help="also write the JSON document to this file")
    parser.add_argument("--from", dest="source", metavar="FILE",
                        help="print the table of a document that --out wrote, without running anything")
    args = parser.parse_args(argv)
    if args.source:
        try:
            print(table(json.loads(Path(args.source).read_text())))
        except (OSError, ValueError) as e:
            parser.error(f"--from {args.source}: {e}")
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = device_for(args.device)
    epochs = args.epochs or (QUICK["epochs"] if args.quick else 5)
    seeds = list(range(1, (args.seeds or (QUICK["seeds"] if args.quick else 5)) + 1))
    models = args.models or list(MODELS)
    candidates = ["fp32", "bf16", "fp16"]
    skipped = {p: why for p in candidates if (why := unsupported(p, device)) is not None}
    precisions = [p for p in candidates if p not in skipped]
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731  progress; stdout keeps the table
    logging.getLogger("dltune").setLevel(logging.ERROR)  # a script's choice: the crowding warning is in the header

    report: dict[str, Any] = {"machine": machine(device), "models": models, "settings": {m: MODELS[m] for m in models},
                              "precisions": precisions, "skipped_precisions": skipped, "seeds": seeds,
                              "epochs": epochs}
    start = time.perf_counter()
    report.update(measure(models, precisions, seeds, epochs, device, args.threads, log))
    report["seconds"] = time.perf_counter() - start
    report["machine"]["load_average_after"] = os.getloadavg()[0]
    report["summary"] = summarize(report)
    report = json_ready(report)
    document = json.dumps(report, indent=2, allow_nan=False)
    if args.out:
        Path(args.out).write_text(document + "\n")
    if args.json:
        print(document)
        return 0
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
