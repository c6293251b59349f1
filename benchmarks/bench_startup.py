"""Start-up time: how long `dltune --help` takes, and what a `dltune train` process spends besides training.

What is measured, each in a fresh Python process started from this one (wall clock of subprocess.run, so the
interpreter's own start is included), with this checkout's src/ first on PYTHONPATH:

* help: `python -m dltune --help` (help_seconds), and each subcommand's `--help` (subcommand_help_seconds);
* torch: `python -c "import torch"`, torch's bare import (torch_import_seconds);
* train: `python -m dltune train examples/seed_mnist.toml --json --out DIR` (the reference experiment: MLP
  784-500-10 on mnist-5k, 10 epochs), whole process (train_wall_seconds), and the time the run reports for its
  own training: train_seconds (optimizer steps) plus every epoch's eval_seconds (train_reported_seconds).
  train_overhead_seconds = wall - reported - torch's bare import of the same round: start-up, config, data
  loading and splitting, the model and optimizer, the test evaluation, writing the run folder, exit;
* the limit on that overhead here: torch.optim imports torch._dynamo (and with it the inductor and sympy) on
  an optimizer's first use, which no code of dltune's can avoid while it trains with torch's optimizers;
  `python -c "import torch; import torch._dynamo"` minus torch's bare import (dynamo_import_seconds).

Also reported: how many modules the `dltune --help` process holds at its end, and which of torch, optuna,
sklearn, scipy, pandas, matplotlib, rich and pydantic are among them (help_heavy_modules).

A warm-up train run comes first and is not counted (it builds the mnist-5k cache on a first use). The
measurements then alternate (their order rotates each round) for --rounds rounds; medians are reported, each
overhead computed within its round. The machine's other load counts in every number: rerun where it is shared.

Run:  .venv/bin/python benchmarks/bench_startup.py [--json] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _verdict import verdict

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "seed_mnist.toml"
TARGETS = {"help_seconds": 0.5, "train_overhead_seconds": 0.8}
HEAVY = ("torch", "optuna", "sklearn", "scipy", "pandas", "matplotlib", "rich", "pydantic")

# Runs dltune's command line in this process, its output discarded, then prints the modules the process holds.
PROBE = """
import contextlib, io, json, sys
from dltune.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(sys.argv[1:])
    except SystemExit:
        pass
print(json.dumps(sorted(sys.modules)))
"""
DYNAMO = "import time, torch; t = time.perf_counter(); import torch._dynamo; print(time.perf_counter() - t)"


def environment() -> dict[str, str]:
    """This process's environment with this checkout's src/ first on the path, so that it is what runs."""
    paths = [str(ROOT / "src"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def timed(*args: str) -> tuple[float, str]:
    """(wall seconds, stdout) of `python ARGS` in a fresh process; a failure stops the benchmark."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=environment(), cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"python {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def train_once(out: Path) -> tuple[float, float]:
    """(wall seconds of the whole process, seconds the run reports for training and per-epoch evaluation)."""
    seconds, stdout = timed("-m", "dltune", "train", str(CONFIG), "--json", "--out", str(out))
    result = json.loads(stdout)
    return seconds, result["train_seconds"] + sum(e["eval_seconds"] for e in result["epochs"])


def subcommands() -> list[str]:
    sys.path.insert(0, str(ROOT / "src"))
    from dltune.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(action.choices)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only a JSON document")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    args = parser.parse_args(argv)
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))

    commands = subcommands()
    modules = json.loads(timed("-c", PROBE, "--help")[1])
    help_s, torch_s, wall_s, reported_s, overhead_s, dynamo_s = ([] for _ in range(6))
    sub_s: dict[str, list[float]] = {c: [] for c in commands}
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        train_once(Path(tmp) / "warm-up")
        for r in range(1, args.rounds + 1):
            round_: dict[str, float] = {}

            def measure(which: str) -> None:
                if which == "help":
                    round_["help"] = timed("-m", "dltune", "--help")[0]
                elif which == "torch":
                    round_["torch"] = timed("-c", "import torch")[0]
                elif which == "train":
                    round_["wall"], round_["reported"] = train_once(Path(tmp) / f"run-{r}")
                elif which == "dynamo":
                    round_["dynamo"] = float(timed("-c", DYNAMO)[1])
                else:
                    for command in commands:
                        sub_s[command].append(timed("-m", "dltune", command, "--help")[0])

            order = ["help", "torch", "train", "dynamo", "subcommands"]
            for which in order[r % len(order):] + order[:r % len(order)]:  # a different one first each round
                measure(which)
            help_s.append(round_["help"])
            torch_s.append(round_["torch"])
            wall_s.append(round_["wall"])
            reported_s.append(round_["reported"])
            overhead_s.append(round_["wall"] - round_["reported"] - round_["torch"])
            dynamo_s.append(round_["dynamo"])
            log(f"round {r}/{args.rounds}: help {help_s[-1]:.2f}s | import torch {torch_s[-1]:.2f}s | train "
                f"{wall_s[-1]:.2f}s, of which training {reported_s[-1]:.2f}s: overhead {overhead_s[-1]:.2f}s | "
                f"torch._dynamo {dynamo_s[-1]:.2f}s")
    wall = time.perf_counter() - wall

    med = statistics.median
    out = {
        "rounds": args.rounds,
        "help_seconds": med(help_s),
        "subcommand_help_seconds": {c: med(v) for c, v in sub_s.items()},
        "torch_import_seconds": med(torch_s),
        "train_wall_seconds": med(wall_s),
        "train_reported_seconds": med(reported_s),
        "train_overhead_seconds": med(overhead_s),
        "dynamo_import_seconds": med(dynamo_s),
        "help_modules": len(modules),
        "help_heavy_modules": [m for m in HEAVY if m in modules],
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0

    span = lambda v: f"[{min(v):.2f}..{max(v):.2f}]"  # noqa: E731
    print(f"\n{args.rounds} rounds (medians, [min..max]), {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end, {wall:.0f} s")
    print(f"  dltune --help                  {out['help_seconds']:.3f} s  {span(help_s)}  "
          f"{out['help_modules']} modules; heavy ones: {', '.join(out['help_heavy_modules']) or 'none'}")
    slowest = max(out["subcommand_help_seconds"].items(), key=lambda kv: kv[1])
    print(f"  dltune COMMAND --help          {min(out['subcommand_help_seconds'].values()):.3f}.."
          f"{slowest[1]:.3f} s over {len(commands)} commands (slowest: {slowest[0]})")
    print(f"  python -c 'import torch'       {out['torch_import_seconds']:.3f} s  {span(torch_s)}")
    print(f"  dltune train (reference)       {out['train_wall_seconds']:.3f} s  {span(wall_s)}, of which the run "
          f"reports {out['train_reported_seconds']:.3f} s of training and evaluation")
    print(f"  overhead (wall - reported - import torch)  {out['train_overhead_seconds']:.3f} s  {span(overhead_s)}")
    print(f"  import torch._dynamo after torch  {out['dynamo_import_seconds']:.3f} s  {span(dynamo_s)} (torch.optim's "
          "first step imports it)")
    print("targets:")
    print(f"  help_seconds {out['help_seconds']:.2f} (target <= {TARGETS['help_seconds']}): "
          f"{verdict(out['help_seconds'], TARGETS['help_seconds'], higher=False)}")
    overhead = verdict(out["train_overhead_seconds"], TARGETS["train_overhead_seconds"], higher=False,
                       limit=out["dynamo_import_seconds"], source="importing torch._dynamo, which torch.optim does")
    print(f"  train_overhead_seconds {out['train_overhead_seconds']:.2f} (target <= "
          f"{TARGETS['train_overhead_seconds']}): {overhead}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
