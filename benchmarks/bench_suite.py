"""dltune's automatic decisions judged on every problem of the suite (benchmarks/problems.py), paired over seeds.

* search: on each problem and seed s, a full-budget TPE search (search.pruner = "none") and the default search
  (ASHA, the rest as the problem says), run in turn (seed s: full first; seed s + 1: default first). Each search's
  best trial by the objective is judged by its test metric, in points (accuracy or r2, x 100). Reported: the paired
  difference default - full with its 95% t-interval, the epochs trained (ratio default / full) and the seconds, and
  Spearman's rho between the full search's validation values at epoch 1 (and at each ASHA rung) and at its last
  epoch. Target: the difference within 1 point (the interval's upper end >= -1) on every problem, at <= 35% of the
  full search's epochs (median over problems). The full searches' curves are kept in the JSON to replay pruning.
* lr: on each problem and seed, the lr that `--auto lr` chooses (`dltune.tuner.auto.find_settings`: lr-find's
  suggestion when it is confident, else the problem's optim.lr), and every lr of the problem's grid, each trained
  with that seed (train.seed: the initial weights and the batch order). Gap = the grid's best lr (by mean) - the
  chosen lr, paired by seed, in points; a diverged run counts as 0. Target: within 1 point on every problem, or
  lr-find flagged as not confident where it missed; and no confident miss (a mean gap over the seeds where it
  was confident > 1 point).
* auto: `dltune.tuner.auto.train` with train.auto = ["lr", "batch"] (the finders' time counted) against the problem's
  default experiment: the wall time until the first epoch whose validation metric reaches the default's final
  one (its mean over seeds). The splits are loaded before the clock starts; runs go one at a time, in turn.
  Target: the ratio of median times auto / default <= 1 on every problem.

Searches and trainings of the first two run in --jobs processes (1 torch thread each); the auto decision's runs
are timed alone, after them. Progress goes to stderr.

Run:  .venv/bin/python benchmarks/bench_suite.py [--problems NAME ...] [--seeds 3] [--jobs 2] [--quick]
                                                 [--decisions search,lr,auto] [--json] [--out FILE] [--markdown]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import optuna
from _verdict import verdict
from problems import PROBLEMS, Problem
from rich.console import Console
from rich.table import Table
from scipy import stats

from dltune.run.assembly import splits_for
from dltune.tuner.auto import find_settings
from dltune.tuner.auto import train as auto_train
from dltune.experiment.config import ExperimentConfig, override
from dltune.data import Splits
from dltune.strict_json import json_ready
from dltune.study.asha import rungs
from dltune.study.tune import tune
from dltune import train

QUICK = {"problems": ["own-model", "tabular-regression"], "seeds": 2, "trials": 8, "epochs": 5}
PRUNERS = {"full": "none", "default": "asha"}
POINTS = 1.0  # the tolerance of the search and lr targets, in points of the test metric
EPOCH_RATIO = 0.35  # the search target: default / full epochs, median over problems
TIME_RATIO = 1.0  # the auto target: no slower than the default


def log(line: str) -> None:
    sys.stderr.write(line + "\n")  # one write: the lines of --jobs processes do not interleave
    sys.stderr.flush()


def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a script's choice: dltune leaves Optuna's logging as found


def interval(values: list[float]) -> tuple[float, float]:
    """The mean and the half-width of its 95% t-interval (nan for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def turns(seed: int, arms: tuple[str, str]) -> tuple[str, str]:
    """The two arms in the order seed `seed` runs them: as given for odd seeds, reversed for even ones, so that
    neither always goes first."""
    return arms if seed % 2 == 1 else arms[::-1]


# --- search: the default (ASHA) against the full budget ------------------------------------------------

def search(job: tuple[Problem, str, int]) -> dict[str, Any]:
    """One search ("full" or "default") of a problem with search.seed `seed`: the best trial's test points, the
    epochs trained, the seconds; for the full search also every trial's validation curve, test metric, params."""
    problem, arm, seed = job
    config = override(problem.config(), {"search.pruner": PRUNERS[arm], "search.seed": seed})
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        data = tune(config, out_dir=out)
        seconds = time.perf_counter() - start
    name = problem.metric
    best = next(t for t in data.trials if t.number == data.best[0])
    run = {"points": 100 * best.test[name], "epochs": sum(len(t.epochs) for t in data.trials), "seconds": seconds,
           "best_trial": best.number}
    if arm == "full":
        run["trials"] = [{"number": t.number, "state": t.state, "params": t.params, "test": t.test.get(name),
                          "curve": [e["val"][name] for e in t.epochs]} for t in data.trials]
    log(f"search {problem.name} seed {seed} {arm}: {run['points']:.2f} points, {run['epochs']} epochs, "
        f"{seconds:.0f}s")
    return run


def rank_agreement(trials: list[dict[str, Any]], epochs: int, at: list[int]) -> dict[int, float]:
    """Spearman's rho between the validation values at each epoch of `at` and at the last epoch, over the trials
    that trained to the end."""
    curves = [t["curve"] for t in trials if len(t["curve"]) == epochs and all(map(math.isfinite, t["curve"]))]
    final = [c[-1] for c in curves]
    return {k: float(stats.spearmanr([c[k - 1] for c in curves], final).statistic) for k in at}


def judge_search(problem: Problem, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One problem's searches summarized: means, the paired difference, the epoch ratio, rank agreement."""
    config = problem.config()
    at = rungs(config.search.min_epochs, config.search.reduction_factor, problem.epochs)
    rho = [rank_agreement(r["trials"], problem.epochs, at) for r in runs["full"]]
    diff, half = interval([d["points"] - f["points"] for f, d in zip(runs["full"], runs["default"])])
    means = {arm: {m: statistics.fmean(r[m] for r in rs) for m in ("points", "epochs", "seconds")}
             for arm, rs in runs.items()}
    return {**means, "difference": diff, "half_width": half,
            "epoch_ratio": means["default"]["epochs"] / means["full"]["epochs"],
            "rho": {k: statistics.fmean(r[k] for r in rho) for k in at}, "rho_per_seed": rho,
            "verdict": verdict(diff + half, -POINTS), "runs": runs}


def decide_search(problems: list[Problem], seeds: list[int], pool: ProcessPoolExecutor) -> dict[str, Any]:
    jobs = [(p, arm, s) for p in problems for s in seeds for arm in turns(s, ("full", "default"))]
    done = list(pool.map(search, jobs))
    runs = {p.name: {"full": [], "default": []} for p in problems}
    for (p, arm, _), run in zip(jobs, done):
        runs[p.name][arm].append(run)
    rows = {p.name: judge_search(p, runs[p.name]) for p in problems}
    median = statistics.median(r["epoch_ratio"] for r in rows.values())
    return {"problems": rows, "median_epoch_ratio": median,
            "verdict_points": verdict(min(r["difference"] + r["half_width"] for r in rows.values()), -POINTS),
            "verdict_epochs": verdict(median, EPOCH_RATIO, higher=False)}


# --- lr: what --auto lr chooses against a half-decade grid ---------------------------------------------

def lr_choice(job: tuple[Problem, int]) -> dict[str, Any]:
    """The lr that `--auto lr` trains `problem` with at train.seed `seed`, and whether lr-find was confident."""
    problem, seed = job
    _, found = find_settings(override(problem.config(), {"train.seed": seed, "train.auto": ["lr"]}))
    lr = found["lr"]
    said = "confident" if lr["confident"] else "not confident"
    log(f"lr-find {problem.name} seed {seed}: {lr['chosen']:.2e} ({said})")
    return {k: lr[k] for k in ("chosen", "confident", "suggested", "reasons")}


def trained_points(job: tuple[Problem, int, float]) -> float:
    """The test points after training `problem` at `lr` with train.seed `seed`; a diverged run counts as 0."""
    problem, seed, lr = job
    result = train(override(problem.config(), {"train.seed": seed, "optim.lr": lr}))
    return 100 * result.test[problem.metric] if result.status == "completed" else 0.0


def judge_lr(problem: Problem, seeds: list[int], choices: list[dict[str, Any]],
             points: dict[tuple[str, int, float], float]) -> dict[str, Any]:
    """One problem's gap between the grid's best lr and the chosen one, paired by seed."""
    grid = {lr: [points[problem.name, s, lr] for s in seeds] for lr in problem.grid}
    best = max(grid, key=lambda lr: statistics.fmean(grid[lr]))
    chosen = [points[problem.name, s, c["chosen"]] for s, c in zip(seeds, choices)]
    gaps = [b - c for b, c in zip(grid[best], chosen)]
    gap, half = interval(gaps)
    sure = [g for g, c in zip(gaps, choices) if c["confident"]]
    confident_gap = statistics.fmean(sure) if sure else None
    flagged = gap > POINTS and (confident_gap is None or confident_gap <= POINTS)  # missed where not confident
    return {"grid_best_lr": best, "grid_best": statistics.fmean(grid[best]), "chosen": statistics.fmean(chosen),
            "gap": gap, "half_width": half, "per_seed": gaps, "choices": choices, "confident_gap": confident_gap,
            "grid": {f"{lr:.3g}": v for lr, v in grid.items()}, "missed": gap > POINTS and not flagged,
            "verdict": "flagged: not confident where it missed" if flagged else verdict(gap, POINTS, higher=False)}


def decide_lr(problems: list[Problem], seeds: list[int], pool: ProcessPoolExecutor) -> dict[str, Any]:
    pairs = [(p, s) for p in problems for s in seeds]
    choices = dict(zip([(p.name, s) for p, s in pairs], pool.map(lr_choice, pairs)))
    jobs = list({(p.name, s, lr): (p, s, lr) for p, s in pairs
                 for lr in [choices[p.name, s]["chosen"], *p.grid]}.values())
    start = time.perf_counter()
    points = dict(zip([(p.name, s, lr) for p, s, lr in jobs], pool.map(trained_points, jobs)))
    log(f"lr: {len(jobs)} trainings in {time.perf_counter() - start:.0f}s")
    rows = {p.name: judge_lr(p, seeds, [choices[p.name, s] for s in seeds], points) for p in problems}
    misses = [name for name, r in rows.items() if (r["confident_gap"] or 0.0) > POINTS]
    return {"problems": rows, "confident_misses": misses,
            "verdict_gap": verdict(sum(r["missed"] for r in rows.values()), 0, higher=False, shown="{:.0f}".format),
            "verdict_confidence": verdict(len(misses), 0, higher=False, shown="{:.0f}".format)}


# --- auto: time to the default's validation metric -----------------------------------------------------

def timed(config: ExperimentConfig, splits: Splits, name: str) -> dict[str, Any]:
    """One run (the finders of train.auto first, if any): seconds since the call and the validation value, after
    each epoch."""
    marks: list[tuple[float, float]] = []
    start = time.perf_counter()
    result = auto_train(config, lambda epoch, record: marks.append((time.perf_counter() - start, record["val"][name])),
                        data=splits)
    return {"seconds": [t for t, _ in marks], "values": [v for _, v in marks],
            "finders": (result.auto or {}).get("seconds", 0.0)}


def reached(run: dict[str, Any], target: float) -> float:
    """Seconds until the first epoch at or above `target`; inf if none."""
    return next((t for t, v in zip(run["seconds"], run["values"]) if v >= target), math.inf)


def ratio(auto: float, default: float) -> float:
    """auto / default seconds, where a run that never reached the target took forever: 0 when only the default
    never reached it, nan when neither did."""
    if math.isinf(default):
        return math.nan if math.isinf(auto) else 0.0
    return auto / default


def judge_auto(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One problem's times to the target: the default's final validation value, its median over seeds (so that at
    least half of the default's runs reach it). The limit: the finders' own seconds against the default's time, a
    ratio that no run with the finders can beat."""
    target = statistics.median(r["values"][-1] for r in runs["default"])
    times = {arm: [reached(r, target) for r in rs] for arm, rs in runs.items()}
    median = {arm: statistics.median(ts) for arm, ts in times.items()}
    by_median = ratio(median["auto"], median["default"])
    limit = statistics.median(r["finders"] for r in runs["auto"]) / median["default"]
    paired = [a / d for a, d in zip(times["auto"], times["default"]) if math.isfinite(a) and math.isfinite(d)]
    _, half = interval(paired) if paired else (math.nan, math.nan)
    return {"target": target, "times": times, "median": median, "ratio": by_median, "half_width": half,
            "missed": {arm: [max(r["values"], default=math.nan) for r, t in zip(rs, times[arm]) if math.isinf(t)]
                       for arm, rs in runs.items()},  # the best validation value of each run that never reached it
            "finders_limit": limit,
            "verdict": "neither reached it" if math.isnan(by_median) else verdict(
                by_median, TIME_RATIO, higher=False, limit=limit, source="the finders' own time"),
            "runs": runs}


def decide_auto(problems: list[Problem], seeds: list[int]) -> dict[str, Any]:
    rows = {}
    for p in problems:
        base = p.config()
        splits = splits_for(base)  # loaded before the clocks start, once for both
        train(override(base, {"train.epochs": 1}), data=splits)  # untimed: what a first run in a process pays
        runs: dict[str, list[dict[str, Any]]] = {"default": [], "auto": []}
        for s in seeds:
            for arm in turns(s, ("default", "auto")):
                config = override(base, {"train.seed": s, "train.auto": ["lr", "batch"] if arm == "auto" else []})
                runs[arm].append(timed(config, splits, p.metric))
                log(f"auto {p.name} seed {s} {arm}: {runs[arm][-1]['seconds'][-1]:.1f}s")
        rows[p.name] = judge_auto(runs)
    slower = sum(not r["ratio"] <= TIME_RATIO for r in rows.values())  # nan (neither reached it) counts too
    return {"problems": rows, "verdict": verdict(slower, 0, higher=False, shown="{:.0f}".format)}


# --- tables ------------------------------------------------------------------------------------------

# each table: its column heads, its rows of cells and the notes under it, from a decision's result (data apart
# from drawing: `show` draws any of them for the terminal or as Markdown)
Drawn = tuple[list[str], list[list[str]], list[str]]
NOISE = "±: the half-width of the 95% t-interval over the seeds, paired: the limit that noise sets"


def _pm(mean: float, half: float) -> str:
    return f"{mean:+.2f} ± {half:.2f}"


def search_table(result: dict[str, Any]) -> Drawn:
    head = ["problem", "full: points", "epochs", "s", "default: points", "epochs", "s",
            "default - full (target >= -1, ± noise)", "epoch ratio", "rho by epoch", "verdict"]
    rows = [[name, f"{r['full']['points']:.2f}", f"{r['full']['epochs']:.0f}", f"{r['full']['seconds']:.0f}",
             f"{r['default']['points']:.2f}", f"{r['default']['epochs']:.0f}", f"{r['default']['seconds']:.0f}",
             _pm(r["difference"], r["half_width"]), f"{r['epoch_ratio']:.2f}",
             ", ".join(f"{k}: {v:+.2f}" for k, v in r["rho"].items()), r["verdict"]]
            for name, r in result["problems"].items()]
    notes = [NOISE, f"points: within {POINTS:g} of the full search on every problem: {result['verdict_points']}",
             f"epochs: median ratio {result['median_epoch_ratio']:.2f} (target <= {EPOCH_RATIO}): "
             f"{result['verdict_epochs']}"]
    return head, rows, notes


def lr_table(result: dict[str, Any]) -> Drawn:
    head = ["problem", "grid best", "chosen lrs", "chosen: points", "gap (target <= 1, ± noise)", "confident",
            "confident gap", "verdict"]
    rows = []
    for name, r in result["problems"].items():
        sure = [c["confident"] for c in r["choices"]]
        rows.append([name, f"{r['grid_best']:.2f} @ {r['grid_best_lr']:.1e}",
                     ", ".join(f"{c['chosen']:.1e}" for c in r["choices"]), f"{r['chosen']:.2f}",
                     _pm(r["gap"], r["half_width"]), f"{sum(sure)}/{len(sure)}",
                     "-" if r["confident_gap"] is None else f"{r['confident_gap']:+.2f}", r["verdict"]])
    notes = [NOISE, f"within {POINTS:g} point or flagged, every problem: {result['verdict_gap']}",
             f"confident misses: {', '.join(result['confident_misses']) or 'none'}: {result['verdict_confidence']}"]
    return head, rows, notes


def auto_table(result: dict[str, Any]) -> Drawn:
    # a document read back (--from) holds null where a run never reached the target (inf) or a ratio is undefined
    def number(value: float | None, missing: float = math.inf) -> float:
        return missing if value is None else value

    def shown(seconds: float | None, missed: list[float]) -> str:
        seconds = number(seconds)
        if math.isfinite(seconds):
            return f"{seconds:.2f}"
        return f"not reached (best {', '.join(f'{v:.4f}' for v in missed)})"

    def count(times: list[float | None]) -> str:
        return f"{sum(math.isfinite(number(t)) for t in times)}/{len(times)}"

    head = ["problem", "target (val)", "default: s", "reached", "auto: s", "reached", "ratio (target <= 1, ± noise)",
            "finders alone", "verdict"]
    rows = [[name, f"{r['target']:.4f}", shown(r["median"]["default"], r["missed"]["default"]),
             count(r["times"]["default"]), shown(r["median"]["auto"], r["missed"]["auto"]), count(r["times"]["auto"]),
             f"{number(r['ratio'], math.inf if r['median']['default'] is not None else math.nan):.2f} ± "
             f"{number(r['half_width'], math.nan):.2f}",
             f"{number(r['finders_limit'], math.nan):.2f}", r["verdict"]]
            for name, r in result["problems"].items()]
    return head, rows, [NOISE + " (of the per-seed ratios)",
                        "finders alone: the finders' median seconds / the default's, the ratio that no run with them "
                        "can beat (the limit here)", f"no slower on every problem: {result['verdict']}"]


TABLES: dict[str, tuple[str, Callable[[dict[str, Any]], Drawn]]] = {  # decision -> (title, its table)
    "search": ("search: default (TPE + ASHA) against the full budget (TPE, no pruning); test points, means over "
               "seeds", search_table),
    "lr": ("lr: what --auto lr chooses against the best lr of a half-decade grid; test points, means over seeds",
           lr_table),
    "auto": ("auto: --auto lr,batch against the default, seconds to the default's final validation metric "
             "(medians over seeds)", auto_table),
}


def show(title: str, head: list[str], rows: list[list[str]], notes: Iterable[str], markdown: bool) -> None:
    """One table on stdout: for a terminal (rich), or as GitHub Markdown for the README."""
    if markdown:
        print(f"\n**{title}**\n")
        print("| " + " | ".join(head) + " |\n|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|")
        print("\n".join("| " + " | ".join(cells) + " |" for cells in rows))
        print("\n" + "\n".join(f"- {n}" for n in notes))
        return
    table = Table(*head, title=title, title_justify="left")
    for cells in rows:
        table.add_row(*cells)
    console = Console(width=max(shutil.get_terminal_size().columns, 160))
    console.print(table)
    for n in notes:
        console.print("  " + n)


# --- the command -------------------------------------------------------------------------------------

def chosen_problems(args: argparse.Namespace) -> list[Problem]:
    """The problems to run, scaled down for --quick; those whose data are missing are skipped, said on stderr."""
    names = args.problems or (QUICK["problems"] if args.quick else list(PROBLEMS))
    out = []
    for name in names:
        problem = PROBLEMS[name]
        if problem.missing():
            log(f"skipped {name}: missing {', '.join(map(str, problem.missing()))}")
            continue
        if args.quick:
            problem = dataclasses.replace(problem, trials=QUICK["trials"], epochs=QUICK["epochs"])
        out.append(problem)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", choices=list(PROBLEMS), metavar="NAME",
                        help=f"only these (default: all of {', '.join(PROBLEMS)})")
    parser.add_argument("--seeds", type=int, help="seeds 1..N, paired across arms (default: 3; --quick: 2)")
    parser.add_argument("--first-seed", type=int, default=1,
                        help="seeds FIRST..FIRST+N-1: fresh seeds check a choice made on others (default: 1)")
    parser.add_argument("--from", dest="source", metavar="FILE",
                        help="print the tables of a document that --out wrote, without running anything")
    parser.add_argument("--jobs", type=int, default=2, help="processes for searches and trainings, 1 thread each")
    parser.add_argument("--decisions", default="search,lr,auto", help="comma-separated: search, lr, auto")
    parser.add_argument("--quick", action="store_true",
                        help=f"development run: {', '.join(QUICK['problems'])}, {QUICK['seeds']} seeds, "
                             f"{QUICK['trials']} trials of {QUICK['epochs']} epochs")
    parser.add_argument("--json", action="store_true", help="print only a JSON document")
    parser.add_argument("--out", metavar="FILE", help="also write the JSON document to this file")
    parser.add_argument("--markdown", action="store_true", help="the tables as GitHub Markdown")
    args = parser.parse_args(argv)
    decisions = args.decisions.split(",")
    if unknown := set(decisions) - set(TABLES):
        parser.error(f"--decisions: unknown {', '.join(sorted(unknown))}; known: {', '.join(TABLES)}")
    if args.source:
        try:
            report = json.loads(Path(args.source).read_text())
        except (OSError, ValueError) as e:
            parser.error(f"--from {args.source}: {e}")
        tables(report, [d for d in decisions if d in report], args.markdown)
        return 0
    count = args.seeds or (QUICK["seeds"] if args.quick else 3)
    seeds = list(range(args.first_seed, args.first_seed + count))
    if len(seeds) < 2:
        parser.error("--seeds: at least 2 (the intervals need them)")
    problems = chosen_problems(args)
    _quiet()
    settings = {p.name: {**dataclasses.asdict(p), "test_metric": p.test_metric} for p in problems}
    report: dict[str, Any] = {"problems": [p.name for p in problems], "seeds": seeds, "quick": args.quick,
                              "jobs": args.jobs, "settings": settings}
    start = time.perf_counter()
    with ProcessPoolExecutor(args.jobs, initializer=_quiet) as pool:
        if "search" in decisions:
            report["search"] = decide_search(problems, seeds, pool)
        if "lr" in decisions:
            report["lr"] = decide_lr(problems, seeds, pool)
    if "auto" in decisions:  # timed alone: nothing else runs now
        report["auto"] = decide_auto(problems, seeds)
    report["seconds"] = time.perf_counter() - start
    document = json.dumps(json_ready(report), indent=2, allow_nan=False, default=str)
    if args.out:
        Path(args.out).write_text(document)
    if args.json:
        print(document)
        return 0
    tables(report, decisions, args.markdown)
    return 0


def tables(report: dict[str, Any], decisions: list[str], markdown: bool) -> None:
    for decision in decisions:
        title, table = TABLES[decision]
        show(title, *table(report[decision]), markdown=markdown)
    print(f"\nseeds {report['seeds']}, {report['seconds']:.0f}s in all")


if __name__ == "__main__":
    sys.exit(main())
