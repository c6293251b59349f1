"""Data-parallel scaling on this machine: DistributedDataParallel on 2 processes (gloo, one torch thread each)
against 1 process, at the same global batch, alternating in each round; medians over rounds.

sps_1: samples/s of the training loop in 1 process on 1 thread (the resources of one rank);
sps_2: samples/s of 2 processes together (each on 1 thread; the global batch split between them);
efficiency = sps_2 / (2 · sps_1): 1.0 is perfect scaling;
sps_1_all_threads: 1 process on every core, what a user runs instead of DDP: DDP pays where sps_2 beats it.
sps_pipeline_2: 2 pipeline stages (1 thread each, 4 micro-batches) at the reference width.
equivalent: the 2-process run ends with the 1-process run's weights (within 1e-4) at the reference width (each row
also gives its largest weight difference).

Samples/s are the training loop's (RunResult.samples_per_second: optimizer steps, not evaluation); the launch
(torchrun starting 2 processes that import torch, ~5-7 s here) is reported apart as launch_seconds, since it is paid
once per run. The sweep over the MLP's hidden width finds where DDP starts to pay, if it does.

Run:  .venv/bin/python benchmarks/bench_ddp.py [--json] [--rounds 3] [--widths 500,2000,4000] [--batch 100]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from dltune.experiment.config import ExperimentConfig, load_config, override
from dltune import train

CONFIG = Path(__file__).resolve().parent.parent / "examples" / "seed_mnist.toml"
REFERENCE = 500  # the article's MLP 784-500-10
EPOCHS = 2
TOLERANCE = 1e-4  # weights, after EPOCHS epochs: float sums in another order (wider layers drift further apart)


def experiment(width: int, batch: int) -> ExperimentConfig:
    return override(load_config(CONFIG), {"train.epochs": EPOCHS, "model.hidden": [width], "batch.size": batch})


def one_process(config: ExperimentConfig, threads: int):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return train(config)
    finally:
        torch.set_num_threads(before)


def two_processes(config: ExperimentConfig, strategy: str = "ddp"):
    """A run on 2 processes of one thread each (DDP, or 2 pipeline stages), and the seconds it spent outside its
    training loop and evaluation (launching)."""
    start = time.perf_counter()
    result = train(override(config, {"parallel.strategy": strategy, "parallel.nproc": 2, "parallel.stages": 2,
                                     "parallel.threads": 1}))
    wall = time.perf_counter() - start
    return result, wall - result.train_seconds - sum(e["eval_seconds"] for e in result.epochs)


def weight_difference(a, b) -> float:
    """The largest difference between two runs' weights."""
    return max((x - y).abs().max().item()
               for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True))


def measure(width: int, rounds: int, batch: int) -> dict:
    config = experiment(width, batch)
    sps_1, sps_all, sps_2, sps_pipe, launch = [], [], [], [], []
    difference = 0.0
    for _ in range(rounds):  # alternating: the machine's noise falls on all three alike
        single = one_process(config, 1)
        sps_1.append(single.samples_per_second)
        sps_all.append(one_process(config, torch.get_num_threads()).samples_per_second)
        ddp, seconds = two_processes(config)
        sps_2.append(ddp.samples_per_second)
        launch.append(seconds)
        difference = max(difference, weight_difference(single, ddp))
        if width == REFERENCE:
            sps_pipe.append(two_processes(config, "pipeline")[0].samples_per_second)
    s1, s2, sa = statistics.median(sps_1), statistics.median(sps_2), statistics.median(sps_all)
    return {"width": width, "parameters": single.parameters, "sps_1": s1, "sps_2": s2, "sps_1_all_threads": sa,
            "efficiency": s2 / (2 * s1), "speedup_vs_all_threads": s2 / sa, "pays": s2 > sa,
            "launch_seconds": statistics.median(launch), "max_weight_difference": difference,
            "equivalent": difference <= TOLERANCE,
            "sps_pipeline_2": statistics.median(sps_pipe) if sps_pipe else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--widths", default="500,2000,4000",
                        help="hidden widths to sweep; the first equal to 500 is the reference")
    parser.add_argument("--batch", type=int, default=100, help="the global batch (default: the article's 100)")
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    sweep = [measure(w, args.rounds, args.batch) for w in widths]
    reference = next((row for row in sweep if row["width"] == REFERENCE), sweep[0])
    paying = [row["width"] for row in sweep if row["pays"]]
    report = {"cores": torch.get_num_threads(), "rounds": args.rounds, "epochs": EPOCHS, "global_batch": args.batch,
              "sps_1": reference["sps_1"], "sps_2": reference["sps_2"], "efficiency": reference["efficiency"],
              "equivalent": reference["equivalent"], "pays_from_width": paying[0] if paying else None,
              "sweep": sweep}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"DDP on 2 processes (gloo, 1 thread each) against 1 process; global batch {args.batch}; {args.rounds} rounds, "
          f"medians; {report['cores']} cores")
    print(f"{'width':>6} {'params':>10} {'sps_1':>9} {'sps_1 all':>10} {'sps_2':>9} {'efficiency':>10} "
          f"{'vs all thr':>10} {'launch s':>8} {'max diff':>9}")
    for r in sweep:
        print(f"{r['width']:>6} {r['parameters']:>10,} {r['sps_1']:>9,.0f} {r['sps_1_all_threads']:>10,.0f} "
              f"{r['sps_2']:>9,.0f} {r['efficiency']:>10.2f} {r['speedup_vs_all_threads']:>9.2f}x "
              f"{r['launch_seconds']:>8.1f} {r['max_weight_difference']:>9.1e}")
    print(f"DDP pays (beats 1 process on all cores) from width: {report['pays_from_width'] or 'none measured'}")
    if reference["sps_pipeline_2"]:
        print(f"pipeline, 2 stages (4 micro-batches), width {reference['width']}: "
              f"{reference['sps_pipeline_2']:,.0f} samples/s")


if __name__ == "__main__":
    main()
