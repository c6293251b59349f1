"""`dltune tune CONFIG`: automatic search over the experiment's [search.space]."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from rich.table import Table

from dltune.cli.common import add_config_args, add_json_arg, config_from, console, interruptible, print_json
from dltune.records import TrialRecord, TuneData
from dltune.report.tune_report import objective_text, top_trials, write_tune_report
from dltune.tune import tune


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="search the experiment's [search.space] with Optuna (resumes by study name)",
                       description="Create or resume the study and run trials until it holds its target of "
                                   "finished trials; write best.toml, the best weights and the report.")
    add_config_args(p)
    p.add_argument("--trials", type=int, help="finished trials to aim for (default: search.trials)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--jobs", type=int, default=1, help="processes on this machine (a journal file is the storage)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/<config name>-search)")
    p.add_argument("--storage", metavar="URL", help="Optuna storage URL, e.g. postgresql://user@host/db")
    p.add_argument("--study", metavar="NAME", help="study name (default: the config file's name)")
    add_json_arg(p)
    p.set_defaults(run=run)


def printer(stream: TextIO) -> Callable[[TrialRecord], None]:
    def show(trial: TrialRecord) -> None:
        what = {"COMPLETE": ", ".join(f"{v:.4g}" for v in trial.values or []),
                "PRUNED": f"pruned after epoch {trial.pruned_at}", "FAIL": f"failed: {trial.error}"}.get(trial.state, "")
        params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
        stream.write(f"trial {trial.number}: {what}  ({params})\n")
        stream.flush()

    return show


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def run(args: argparse.Namespace) -> int:
    config = config_from(args)
    stem = Path(args.config).stem
    out = Path(args.out or Path("runs") / f"{stem}-search")
    with interruptible() as interrupted:
        data = tune(config, out_dir=out, trials=args.trials, timeout=args.timeout, jobs=args.jobs,
                    storage=args.storage, study=args.study or stem,
                    on_trial=printer(sys.stderr if args.json else sys.stdout), should_stop=interrupted)

    report = write_tune_report(data, out / "report.html")
    if args.json:
        print_json(summary(data, out, report))
        return 0
    show(data, out, report, top_trials(data, config.search.top_k))
    return 0


def summary(data: TuneData, out: Path, report: Path) -> dict:
    counts = {s: sum(t.state == s for t in data.trials) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    best = [t for t in data.trials if t.number in data.best]
    return {"study": data.study, "objectives": data.objectives, "directions": data.directions,
            "trials": {k.lower(): v for k, v in counts.items()},
            "epochs": sum(len(t.epochs) for t in data.trials),
            "best": [{"number": t.number, "values": t.values, "params": t.params, "test": t.test} for t in best],
            "importances": data.importances, "best_config": str(out / "best.toml") if data.best else None,
            "report": str(report)}


def show(data: TuneData, out: Path, report: Path, top: list[TrialRecord]) -> None:
    out_console = console()
    table = Table(title=f"{data.study}: top trials by {data.objectives[0]} ({data.directions[0]})")
    table.add_column("trial", justify="right")
    for name in data.objectives:
        table.add_column(name, justify="right")
    table.add_column("epochs", justify="right")
    table.add_column("parameters")
    for t in top:
        table.add_row(str(t.number), *(objective_text(o, v) for o, v in zip(data.objectives, t.values or [])),
                      str(len(t.epochs)),
                      ", ".join(f"{k}={_short(v)}" for k, v in t.params.items()))
    out_console.print(table)
    s = summary(data, out, report)
    out_console.print(f"trials: {s['trials']['complete']} complete, {s['trials']['pruned']} pruned, "
                  f"{s['trials']['fail']} failed · {s['epochs']} epochs trained", highlight=False)
    if data.importances:
        out_console.print("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in data.importances.items()),
                      highlight=False)
    if data.best:
        out_console.print(f"best experiment: {out / 'best.toml'} (dltune train {out / 'best.toml'})", highlight=False)
    out_console.print(f"report: {report}", highlight=False)
