"""Population-based training (search.pruner = "pbt") against TPE + ASHA and random search at equal total epochs,
paired over seeds.

Three searches of each problem, each maximizing val.accuracy; a search is judged by the test accuracy (points,
x 100) of the trial it picks itself (its best trial by val.accuracy, `TuneData.best`):

* pbt: search.population P members of train.epochs E each, search.interval I epochs a generation: P·E epochs.
* tpe+asha: search.sampler = "tpe", search.pruner = "asha" (dltune's default: trials wait at a rung, most stop
  early). Its search.trials N is chosen before the judged seeds run, so that it spends P·E epochs: N0 from
  synchronous successive halving's spend per trial (min_epochs and reduction_factor as configured: the first rung
  always, then each next stretch with probability 1/eta^k), then calibration searches with seeds 0, 100 and 200
  (not judged): at N0 trials, then (up to 4 rounds in all) at a count scaled by P·E / their mean epochs, or
  interpolated between a count that spent too little and one that spent too much, until a mean lies within 10% of
  P·E (next_trials); N is the count whose mean came nearest. The epochs each judged search really spent
  are reported: ASHA's rank check (a rung whose ranks later reverse lets every trial waiting there go on) can
  spend twice the target on one seed and not on another, which no N chosen up front evens out.
* random: search.sampler = "random", search.pruner = "none", search.trials = P: P·E epochs exactly.

Epochs spent: sum of len(trial.epochs) over the trials (tpe+asha, random); for pbt, end - start of every segment
that ran (a COMPLETE segment's history holds the epochs it copied from its source too). Seed s runs every search
with search.seed = train.seed = s; the arms take turns (rotated by one per seed), 1 torch thread each, on the CPU,
in --jobs processes; each search writes into a temporary folder, removed after.

Problems (overrides of examples/seed_mnist.toml; its mnist-5k with data.val_fraction 0.25: 3,000 training, 1,000
validation and 1,000 test digits, so that a decision on val.accuracy is not one of 400 digits):
* cnn-sgd, the schedule-sensitive one: a CNN (8, 16 channels, head 32) with SGD, momentum 0.9, batch 32, a
  constant [schedule], space optim.lr in [1e-3, 0.5] (log). At batch 100 (and 400 validation digits) it was not
  schedule-sensitive: at random search's best constant lr, multistep gained +0.03 ± 1.17 points (this benchmark's
  check, seeds 1-3, when the problem was set so). At batch 32 a decay gains where the lr is high: on a grid
  (train.seed 1-4, 8 epochs, while choosing the problem), multistep - constant was +1.1 points at lr 0.01, +0.7 at
  0.02, +2.0 at 0.04 (the best constant lr, 0.02: 95.35; multistep at 0.04: 96.17); 12 epochs gained less at 0.01
  (+0.0), so the runs stay at 8. The check that justifies the name runs in the same benchmark and says how far it
  holds at the lrs that random search finds: random search's best constant settings of each seed, trained again
  constant, with a step decay (multistep: lr x 0.1 after 2/3 of the epochs), with cosine, and with the step decay
  at twice the lr (a decay's best lr lies above a constant's), at CHECK_SEEDS training seeds each; reported: the
  paired differences decay - constant. It runs on every problem.
* mlp-adam: the reference MLP (784-500-10) with Adam at batch 100, space optim.lr in [1e-4, 3e-2] and
  optim.weight_decay in [1e-6, 1e-2] (both log).
* digits-sgd: an MLP (64) on scikit-learn's 1,797 digits (360 for test), SGD at batch 32, space optim.lr in
  [1e-3, 1] (log) and optim.momentum in [0, 0.95].

The table: per arm the mean test points and epochs spent; pbt - other with the 95% t-interval over the paired
differences (scipy.stats.t, n - 1 degrees of freedom). PBT's lineages are summarized under it: the exploits, the
explore gain (at the end of the generation in which a member trained on from a copy, its validation value minus
its donor's, which went on unchanged: whether the explored settings did better than the copied ones), and the
best member's settings by epoch (train.changes). Seconds are wall times with --jobs searches side by side.
Target: PBT matches or beats tpe+asha on cnn-sgd (the difference >= 0, or its interval holds 0); where it does not,
the verdict says by how much.

Run:  .venv/bin/python benchmarks/bench_pbt.py [--problems NAME ...] [--seeds 3] [--population 8] [--epochs 8]
                                               [--interval 2] [--jobs 2] [--quick] [--markdown] [--json] [--out FILE]
      .venv/bin/python benchmarks/bench_pbt.py --from benchmarks/results/pbt.json [--markdown]   (no runs)
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import optuna
from _verdict import verdict
from bench_suite import interval, show
from problems import COMMON, SEED_MNIST, Problem

from dltune import train
from dltune.experiment.config import ExperimentConfig, override, to_toml
from dltune.run.environment import environment
from dltune.strict_json import json_ready
from dltune.study.asha import rungs
from dltune.study.records import TrialRecord
from dltune.study.tune import tune

SGD = {"optim.name": "sgd", "optim.momentum": 0.9, "schedule.name": "constant"}
VAL = {"data.val_fraction": 0.25}  # mnist-5k: 3,000 training, 1,000 validation, 1,000 test digits
PROBLEMS: dict[str, Problem] = {p.name: p for p in [  # trials and epochs: set per run (main); grid unused
    Problem("cnn-sgd", "CNN (8, 16 channels, head 32), SGD momentum 0.9 at batch 32, constant schedule, on mnist-5k",
            SEED_MNIST, {**SGD, **VAL, "model.name": "cnn", "model.channels": [8, 16], "model.head": [32],
                         "batch.size": 32},
            {"optim.lr": {"low": 1e-3, "high": 0.5, "log": True}}, trials=8, epochs=8, grid=[]),
    Problem("mlp-adam", "MLP 784-500-10, Adam, constant schedule, on mnist-5k", SEED_MNIST, VAL,
            {"optim.lr": {"low": 1e-4, "high": 3e-2, "log": True},
             "optim.weight_decay": {"low": 1e-6, "high": 1e-2, "log": True}}, trials=8, epochs=8, grid=[]),
    Problem("digits-sgd", "MLP 64-64-10, SGD, batch 32, on sklearn's digits (360 for test)", SEED_MNIST,
            {**SGD, "data.name": "digits", "model.hidden": [64], "batch.size": 32},
            {"optim.lr": {"low": 1e-3, "high": 1.0, "log": True}, "optim.momentum": {"low": 0.0, "high": 0.95}},
            trials=8, epochs=8, grid=[]),
]}
SENSITIVE = "cnn-sgd"  # the problem of the target
ARMS = ("pbt", "asha", "random")
LABELS = {"pbt": "pbt", "asha": "tpe+asha", "random": "random"}
SCHEDULES = ("constant", "multistep", "cosine", "multistep-2x")  # multistep-2x: multistep at twice the lr
QUICK = {"problems": [SENSITIVE], "seeds": 2, "population": 4, "epochs": 4}
CALIBRATION_SEEDS = (0, 100, 200)  # tpe+asha's trials are set on these, apart from the judged seeds 1..N
CALIBRATION_ROUNDS = 4  # at most, of len(CALIBRATION_SEEDS) searches each
TOLERANCE = 0.1  # calibration ends at a mean spend within this share of P·E
CHECK_SEEDS = 3  # the schedule check trains each search seed s's settings with train.seed s, s + 1000, ...


def log(line: str) -> None:
    sys.stderr.write(line + "\n")  # one write: the lines of --jobs processes do not interleave
    sys.stderr.flush()


def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a script's choice: dltune leaves Optuna's logging as found


def rotated(items: tuple[str, ...], k: int) -> tuple[str, ...]:
    k %= len(items)
    return items[k:] + items[:k]


# --- the searches ----------------------------------------------------------------------------------------------

def arm_settings(arm: str, population: int, interval_: int, trials: int) -> dict[str, Any]:
    """The [search] overrides of one arm."""
    if arm == "pbt":
        return {"search.pruner": "pbt", "search.population": population, "search.interval": interval_}
    if arm == "asha":
        return {"search.sampler": "tpe", "search.pruner": "asha", "search.trials": trials}
    return {"search.sampler": "random", "search.pruner": "none", "search.trials": population}


def epochs_spent(trials: list[TrialRecord]) -> int:
    """Epochs trained by a search: a PBT segment's own (end - start), any other trial's history."""
    def spent(t: TrialRecord) -> int:
        if t.pbt is None:
            return len(t.epochs)
        return t.pbt["end"] - t.pbt["start"] if t.state in ("COMPLETE", "PRUNED") else 0

    return sum(map(spent, trials))


def lineage(trials: list[TrialRecord]) -> list[dict[str, Any]]:
    """A PBT search's segments as plain data: member, generation, epochs, whom it copied, how it explored, its
    settings (the first ones and train.changes) and its validation values by epoch."""
    return [{"trial": t.number, "state": t.state, **{k: t.pbt[k] for k in ("member", "generation", "start", "end",
                                                                           "copied_from", "changed")},
             "params": t.params, "values": {int(e): v for e, v in t.pbt.get("values", {}).items()}}
            for t in trials if t.pbt is not None]


def search(job: tuple[Problem, str, int, dict[str, Any]]) -> dict[str, Any]:
    """One search: its best trial's test points and validation value, the epochs it spent, its seconds; PBT's
    lineage; the best trial's settings."""
    problem, arm, seed, settings = job
    config = override(problem.config(), {**settings, "search.seed": seed, "train.seed": seed})
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        data = tune(config, out_dir=out)
        seconds = time.perf_counter() - start
    best = next(t for t in data.trials if t.number == data.best[0])
    run = {"arm": arm, "seed": seed, "points": 100 * best.test[problem.metric], "val": best.values[0],
           "epochs": epochs_spent(data.trials), "trials": len(data.trials), "seconds": seconds,
           "best_trial": best.number, "best_params": best.params}
    if arm == "pbt":
        run["lineage"] = lineage(data.trials)
    log(f"{problem.name} seed {seed} {LABELS[arm]}: {run['points']:.2f} points, {run['epochs']} epochs, "
        f"{run['trials']} trials, {seconds:.0f}s")
    return run


def sha_trials(budget: int, epochs: int, config: ExperimentConfig) -> int:
    """Trials whose synchronous successive halving spends `budget` epochs: each trains to the first rung, then each
    next stretch with probability 1/eta^k."""
    eta = config.search.reduction_factor
    ends = [*rungs(config.search.min_epochs, eta, epochs), epochs]
    per_trial = sum((b - a) / eta**k for k, (a, b) in enumerate(itertools.pairwise([0, *ends])))
    return max(1, round(budget / per_trial))


def next_trials(tried: dict[int, float], budget: int) -> int | None:
    """The next search.trials to calibrate tpe+asha at, from the mean epochs spent at each count tried so far;
    None when one is within TOLERANCE of the budget, or no untried count is left to try. Between a count that spent
    too little and one that spent too much, by linear interpolation; else scaled from the nearest, as if epochs
    grew with trials (they do not always: ASHA's rank check fires more often with more trials at a rung)."""
    if any(abs(e - budget) <= TOLERANCE * budget for e in tried.values()):
        return None
    below = [n for n, e in tried.items() if e < budget]
    above = [n for n, e in tried.items() if e > budget]
    if below and above:
        lo, hi = max(below), min(above)
        if hi - lo < 2:
            return None
        n = round(lo + (budget - tried[lo]) * (hi - lo) / (tried[hi] - tried[lo]))
        n = min(max(n, lo + 1), hi - 1)
    else:
        nearest = min(tried, key=lambda n: abs(tried[n] - budget))
        n = max(1, round(nearest * budget / tried[nearest]))
    return None if n in tried else n


def calibrate(problems: list[Problem], budget: int, pool: ProcessPoolExecutor) -> dict[str, dict[str, Any]]:
    """tpe+asha's search.trials per problem: from the successive-halving guess, up to CALIBRATION_ROUNDS rounds of
    searches at the calibration seeds (next_trials), then the count whose mean spend came nearest the budget. The
    mean, not the median: ASHA's rank check, which lets every trial at a distrusted rung go on, spends about 2.5
    times as much on some seeds and nothing extra on others, and the judged means should match in expectation."""
    tried: dict[str, dict[int, list[int]]] = {p.name: {} for p in problems}
    todo = {p.name: sha_trials(budget, p.epochs, p.config()) for p in problems}
    for _ in range(CALIBRATION_ROUNDS):
        jobs = [(p, "asha", s, arm_settings("asha", 0, 0, todo[p.name])) for p in problems if p.name in todo
                for s in CALIBRATION_SEEDS]
        for (p, *_), run in zip(jobs, pool.map(search, jobs), strict=True):
            tried[p.name].setdefault(todo[p.name], []).append(run["epochs"])
        means = {name: {n: statistics.fmean(es) for n, es in counts.items()} for name, counts in tried.items()}
        for name in list(todo):
            log(f"{name}: tpe+asha at {todo[name]} trials spent {tried[name][todo[name]]} epochs (seeds "
                f"{list(CALIBRATION_SEEDS)}; target {budget})")
            following = next_trials(means[name], budget)
            if following is None:
                del todo[name]
            else:
                todo[name] = following
        if not todo:
            break
    return {name: {"tried": [{"trials": n, "epochs": es} for n, es in counts.items()],
                   "trials": min(means[name], key=lambda n: abs(means[name][n] - budget))}
            for name, counts in tried.items()}


# --- is the problem schedule-sensitive? --------------------------------------------------------------------------

def schedule_settings(name: str, epochs: int) -> dict[str, Any]:
    if name.startswith("multistep"):  # lr x 0.1 after 2/3 of the epochs
        return {"schedule.name": "multistep", "schedule.milestones": [max(1, round(2 * epochs / 3))],
                "schedule.gamma": 0.1}
    return {"schedule.name": name}


def trained(job: tuple[Problem, int, dict[str, Any], str]) -> float:
    """Test points of one training: `params` (random search's best) with schedule `name`, train.seed `seed`."""
    problem, seed, params, name = job
    if name == "multistep-2x":
        params = {**params, "optim.lr": 2 * params["optim.lr"]}
    config = override(problem.config(), {**params, **schedule_settings(name, problem.epochs), "train.seed": seed})
    result = train(config)
    return 100 * result.test[problem.metric] if result.status == "completed" else 0.0


def schedule_check(problems: list[Problem], seeds: list[int], runs: dict[str, dict[str, list[dict[str, Any]]]],
                   pool: ProcessPoolExecutor) -> dict[str, Any]:
    """Per problem: random search's best settings of each search seed s, trained with each schedule at train.seed
    s, s + 1000, ... (CHECK_SEEDS of them); decay - constant, paired over the (s, train.seed) pairs."""
    pairs = [(s, s + 1000 * k) for s in seeds for k in range(CHECK_SEEDS)]
    params = {p.name: dict(zip(seeds, (r["best_params"] for r in runs[p.name]["random"]), strict=True))
              for p in problems}
    jobs = [(p, t, params[p.name][s], name) for p in problems for i, (s, t) in enumerate(pairs)
            for name in rotated(SCHEDULES, i)]
    points = {(p.name, t, name): v for (p, t, _, name), v in zip(jobs, pool.map(trained, jobs), strict=True)}
    out = {}
    for p in problems:
        by = {name: [points[p.name, t, name] for _, t in pairs] for name in SCHEDULES}
        row: dict[str, Any] = {"params": [params[p.name][s] for s in seeds], "pairs": pairs, "points": by,
                               "milestone": schedule_settings("multistep", p.epochs)["schedule.milestones"][0]}
        for name in SCHEDULES[1:]:
            diffs = [d - c for d, c in zip(by[name], by["constant"], strict=True)]
            diff, half = interval(diffs)
            per_seed = [statistics.fmean(d for d, (s, _) in zip(diffs, pairs, strict=True) if s == seed)
                        for seed in seeds]
            row[name] = {"difference": diff, "half_width": half, "per_search_seed": per_seed}
        best = max(SCHEDULES[1:], key=lambda n: row[n]["difference"])
        row["sensitive"] = verdict(row[best]["difference"] - row[best]["half_width"], 0.0)
        out[p.name] = row
    return out


# --- summaries (plain data in, plain data out) -------------------------------------------------------------------

def explore_gains(segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per exploit: how optim.lr changed, and the copier's validation value at its generation's end minus its
    donor's there, in points."""
    at = {(s["member"], s["generation"]): s for s in segments}
    gains = []
    for s in segments:
        donor = at.get((s["copied_from"], s["generation"])) if s["copied_from"] is not None else None
        if donor is not None and s["end"] in s["values"] and s["end"] in donor["values"]:
            gains.append({"lr": s["changed"].get("optim.lr", "left"),
                          "gain": 100 * (s["values"][s["end"]] - donor["values"][s["end"]])})
    return gains


def settings_by_epoch(params: dict[str, Any]) -> list[dict[str, Any]]:
    """A PBT trial's settings as a schedule: the first ones from epoch 1, then each of train.changes."""
    first = {k: v for k, v in params.items() if k != "train.changes"}
    return [{"epoch": 1, **first}, *params.get("train.changes", [])]


def summarize(runs: dict[str, list[dict[str, Any]]], target: int) -> dict[str, Any]:
    """One problem: means per arm, paired differences pbt - other, PBT's lineage figures."""
    means = {arm: {m: statistics.fmean(r[m] for r in rs) for m in ("points", "epochs", "seconds", "trials")}
             for arm, rs in runs.items()}
    diffs = {}
    for other in ARMS[1:]:
        diff, half = interval([p["points"] - o["points"] for p, o in zip(runs["pbt"], runs[other], strict=True)])
        diffs[other] = {"difference": diff, "half_width": half}
    gains = [explore_gains(r["lineage"]) for r in runs["pbt"]]
    flat = [g for gs in gains for g in gs]
    gain, gain_half = interval([g["gain"] for g in flat]) if flat else (math.nan, math.nan)
    by_change = {how: [g["gain"] for g in flat if g["lr"] == how] for how in sorted({g["lr"] for g in flat})}
    paths = [settings_by_epoch(r["best_params"]) for r in runs["pbt"]]
    return {"means": means, "versus": diffs, "target_epochs": target,
            "asha_epoch_ratio": means["asha"]["epochs"] / target, "asha_epochs": [r["epochs"] for r in runs["asha"]],
            "exploits": [sum(s["copied_from"] is not None for s in r["lineage"]) for r in runs["pbt"]],
            "explore_gain": gain, "explore_gain_half_width": gain_half, "explore_gains": gains,
            "explore_gain_by_lr_change": {how: {"n": len(v), "mean": statistics.fmean(v), "min": min(v)}
                                          for how, v in by_change.items()},
            "best_member_settings": paths, "best_member_copied": [len(p) > 1 for p in paths],
            "verdict": verdict(diffs["asha"]["difference"] + diffs["asha"]["half_width"], 0.0)}


# --- tables ------------------------------------------------------------------------------------------------------

def _pm(mean: float | None, half: float | None) -> str:
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return f"{mean:+.2f} ± {half:.2f}" if half is not None and math.isfinite(half) else f"{mean:+.2f}"


def _path(steps: list[dict[str, Any]]) -> str:
    return " → ".join(f"e{s['epoch']} " + ", ".join(f"{k.split('.')[-1]} {v:.3g}" for k, v in s.items()
                                                  if k != "epoch") for s in steps)


def search_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
    head = ["problem", "pbt: points", "epochs", "tpe+asha: points", "epochs", "trials", "random: points", "epochs",
            "pbt − tpe+asha (± noise)", "pbt − random (± noise)", "s: pbt / tpe+asha / random", "verdict"]
    rows, notes = [], []
    for name, r in report["summary"].items():
        m, v = r["means"], r["versus"]
        rows.append([name, f"{m['pbt']['points']:.2f}", f"{m['pbt']['epochs']:.0f}", f"{m['asha']['points']:.2f}",
                     f"{m['asha']['epochs']:.0f}", f"{m['asha']['trials']:.0f}", f"{m['random']['points']:.2f}",
                     f"{m['random']['epochs']:.0f}", _pm(v["asha"]["difference"], v["asha"]["half_width"]),
                     _pm(v["random"]["difference"], v["random"]["half_width"]),
                     " / ".join(f"{m[a]['seconds']:.0f}" for a in ARMS), r["verdict"]])
        c = report["calibration"][name]
        tried = "; ".join(f"{t['trials']} trials spent {', '.join(map(str, t['epochs']))}" for t in c["tried"])
        notes.append(f"{name}: tpe+asha's trials {c['trials']} (calibration at seeds "
                     f"{', '.join(map(str, CALIBRATION_SEEDS))}: {tried} epochs; target {r['target_epochs']}); the "
                     f"judged searches spent {r['asha_epoch_ratio']:.2f}x the target (mean; per seed "
                     f"{', '.join(str(e) for e in r['asha_epochs'])})")
        notes.append(f"{name}: pbt's exploits per search {r['exploits']}; explore gain (copier − donor, val points, "
                     f"end of the next generation) {_pm(r['explore_gain'], r['explore_gain_half_width'])} over "
                     f"{sum(map(len, r['explore_gains']))} exploits; by optim.lr's change: "
                     + ", ".join(f"{how} {g['mean']:+.2f} (n {g['n']}, worst {g['min']:+.2f})"
                                 for how, g in r["explore_gain_by_lr_change"].items()))
        for seed, steps in zip(report["seeds"], r["best_member_settings"], strict=True):
            notes.append(f"{name} seed {seed}: pbt's best member {_path(steps)}")
    notes.insert(0, "±: the half-width of the 95% t-interval over the seeds, paired: the limit that noise sets")
    return head, rows, notes


def schedule_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
    head = ["problem", "random's best lr per seed", *SCHEDULES, *(f"{s} − constant" for s in SCHEDULES[1:]),
            "a decay beats constant"]
    rows = []
    for name, r in report["schedules"].items():
        means = {s: statistics.fmean(r["points"][s]) for s in SCHEDULES}
        rows.append([name, ", ".join(f"{p['optim.lr']:.3g}" for p in r["params"]),
                     *(f"{means[s]:.2f}" for s in SCHEDULES),
                     *(f"{_pm(r[s]['difference'], r[s]['half_width'])} (per seed "
                       f"{', '.join(f'{d:+.2f}' for d in r[s]['per_search_seed'])})" for s in SCHEDULES[1:]),
                     r["sensitive"]])
    milestones = ", ".join(f"{n}: after epoch {r['milestone']}" for n, r in report["schedules"].items())
    pairs = len(next(iter(report["schedules"].values()))["pairs"])
    return head, rows, [f"random search's best settings of each search seed s, trained again with train.seed s, "
                        f"s + 1000, ... ({CHECK_SEEDS} per seed, {pairs} pairs, ± over them); multistep: lr x 0.1 "
                        f"({milestones}); test points, means over the pairs",
                        "multistep-2x: multistep at twice the lr, where a decay's best lr is likely to lie",
                        "a decay beats constant: met where the best decay's interval lies above 0 (the best of three, "
                        "picked after the fact)"]


def print_tables(report: dict[str, Any], markdown: bool) -> None:
    p = report["settings"]
    show(f"PBT against tpe+asha and random search at equal epochs (population {p['population']} x "
         f"{p['epochs']} epochs, interval {p['interval']}): test points of each search's best trial by "
         f"val.accuracy, means over seeds {report['seeds']}", *search_table(report), markdown=markdown)
    show("is the problem schedule-sensitive? random search's best constant settings against a decay",
         *schedule_table(report), markdown=markdown)
    print(f"\ntarget: {report['target']}")
    print(f"{report['seconds']:.0f}s in all, {report['jobs']} processes")


def target_line(summary: dict[str, Any]) -> str:
    if SENSITIVE not in summary:
        return f"not judged: {SENSITIVE} was not run"
    v = summary[SENSITIVE]["versus"]["asha"]
    diff, half = v["difference"], v["half_width"]
    line = (f"pbt matches or beats tpe+asha on {SENSITIVE} at equal epochs (difference >= 0 or its interval holds "
            f"0): {_pm(diff, half)} points: {summary[SENSITIVE]['verdict']}")
    if diff < 0 and not diff + half >= 0:
        line += f"; pbt is behind by {-diff:.2f} points, the interval's upper end {diff + half:+.2f}"
    return line


# --- the command -------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", choices=list(PROBLEMS), metavar="NAME",
                        help=f"only these (default: all of {', '.join(PROBLEMS)})")
    parser.add_argument("--seeds", type=int, help="seeds 1..N, paired across arms (default 3; --quick: 2)")
    parser.add_argument("--population", type=int, help="search.population P (default 8; --quick: 4)")
    parser.add_argument("--epochs", type=int, help="train.epochs E of every run (default 8; --quick: 4)")
    parser.add_argument("--interval", type=int, default=2, help="search.interval: epochs per generation")
    parser.add_argument("--jobs", type=int, default=2, help="processes for searches and trainings, 1 thread each")
    parser.add_argument("--quick", action="store_true",
                        help=f"development run: {', '.join(QUICK['problems'])}, {QUICK['seeds']} seeds, population "
                             f"{QUICK['population']} x {QUICK['epochs']} epochs")
    parser.add_argument("--markdown", action="store_true", help="the tables as GitHub Markdown")
    parser.add_argument("--json", action="store_true", help="print only the JSON document")
    parser.add_argument("--out", metavar="FILE", help="also write the JSON document to this file")
    parser.add_argument("--from", dest="source", metavar="FILE",
                        help="print the tables of a document that --out wrote, without running anything")
    args = parser.parse_args(argv)
    if args.source:
        try:
            with open(args.source) as f:
                print_tables(json.load(f), args.markdown)
        except (OSError, ValueError, KeyError) as e:
            parser.error(f"--from {args.source}: {e}")
        return 0
    seeds = list(range(1, (args.seeds or (QUICK["seeds"] if args.quick else 3)) + 1))
    population = args.population or (QUICK["population"] if args.quick else 8)
    epochs = args.epochs or (QUICK["epochs"] if args.quick else 8)
    if len(seeds) < 2:
        parser.error("--seeds: at least 2 (the intervals need them)")
    names = args.problems or (QUICK["problems"] if args.quick else list(PROBLEMS))
    problems = [dataclasses.replace(PROBLEMS[n], epochs=epochs) for n in names]
    budget = population * epochs
    _quiet()
    report: dict[str, Any] = {"problems": names, "seeds": seeds, "quick": args.quick, "jobs": args.jobs,
                              "settings": {"population": population, "epochs": epochs, "interval": args.interval,
                                           "budget_epochs": budget, "common": COMMON,
                                           "problems": {p.name: {"description": p.description, "settings": p.settings,
                                                                 "space": p.space, "config_toml": to_toml(p.config())}
                                                        for p in problems}},
                              "environment": {**environment("cpu"), "optuna": optuna.__version__,
                                              "load_average_before": os.getloadavg()[0]}}
    start = time.perf_counter()
    with ProcessPoolExecutor(args.jobs, initializer=_quiet) as pool:
        report["calibration"] = calibrate(problems, budget, pool)
        jobs = [(p, arm, s, arm_settings(arm, population, args.interval, report["calibration"][p.name]["trials"]))
                for p in problems for i, s in enumerate(seeds) for arm in rotated(ARMS, i)]
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {p.name: {a: [] for a in ARMS} for p in problems}
        for (p, arm, _, _), run in zip(jobs, pool.map(search, jobs), strict=True):
            runs[p.name][arm].append(run)
        report["schedules"] = schedule_check(problems, seeds, runs, pool)
    report["seconds"] = time.perf_counter() - start
    report["environment"]["load_average_after"] = os.getloadavg()[0]
    report["runs"] = runs
    report["summary"] = {p.name: summarize(runs[p.name], budget) for p in problems}
    report["target"] = target_line(report["summary"])
    report = json_ready(report)
    document = json.dumps(report, indent=2, allow_nan=False, default=str)
    if args.out:
        with open(args.out, "w") as f:
            f.write(document + "\n")
    if args.json:
        print(document)
        return 0
    print_tables(report, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
