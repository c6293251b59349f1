"""`dltune tune CONFIG`: automatic search over the experiment's [search.space]."""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from dltune.cli.common import (
    add_config_args,
    add_json_arg,
    config_from,
    console,
    failed,
    interruptible,
    optuna_logs,
    print_json,
    said_on_interrupt,
)
from dltune.study.records import TrialRecord, TuneData

# The search, the report and rich are imported in the functions that use them: `dltune --help` and `dltune
# worker` (which shares printer()) do not wait for them at start-up.
if TYPE_CHECKING:
    from dltune.cli.progress import StudyProgress
    from dltune.experiment.config import ExperimentConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="search the experiment's [search.space] with Optuna (resumes by study name)",
                       description="Create or resume the study and run trials until it holds its target of "
                                   "finished trials; write best.toml, the best weights and the report.")
    add_config_args(p)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--trials", type=int, metavar="N",
                        help="the study's total of finished trials (complete or pruned), over every run: a study "
                             "that holds N already runs nothing more (default: search.trials)")
    budget.add_argument("--more", type=int, metavar="N",
                        help="N more finished trials than the study in --out (or --storage) holds now")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--enqueue", action="append", default=[], metavar="FILE",
                   help="an experiment file (an earlier search's best.toml, say) whose values of the space's keys "
                        "are tried first, once, after search.enqueue's (repeatable)")
    p.add_argument("--jobs", type=int, default=1, help="processes on this machine (a journal file is the storage; "
                                                          "default: %(default)s)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/<config name>-search)")
    p.add_argument("--storage", metavar="URL", help="Optuna storage URL, e.g. postgresql://user@host/db")
    p.add_argument("--study", metavar="NAME",
                   help="study name (default: the config file's name; or the one search of this same experiment "
                        "that the storage holds under another name, e.g. one started from Python)")
    p.add_argument("--backend", choices=("optuna", "ray"), default="optuna",
                   help="what runs the trials: Optuna's loop here, or Ray Tune (OptunaSearch and its schedulers; "
                        "pip install 'dltune[ray]') on this machine or a Ray cluster (default: %(default)s)")
    p.add_argument("--address", metavar="ADDR", help="with --backend ray: the Ray cluster to run the trials on, "
                                                     "e.g. HEAD:6379 or ray://HEAD:10001 (default: start Ray here)")
    add_json_arg(p)
    p.set_defaults(run=run)


CUT_SHORT = ("the trials that the interrupt cut short are recorded as interrupted, and their configurations are "
             "queued again: the same command goes on with them")


def printer(stream: TextIO) -> Callable[[TrialRecord], None]:
    """Each trial's line as it ends (a worker's output)."""
    def show(trial: TrialRecord) -> None:
        stream.write(trial_line(trial) + "\n")
        stream.flush()

    return show


def trial_line(trial: TrialRecord) -> str:
    if trial.pbt is not None and trial.state in ("COMPLETE", "PRUNED"):
        return segment_line(trial, trial.pbt)
    what = {"COMPLETE": ", ".join(f"{v:.4g}" for v in trial.values or []),
            "PRUNED": f"pruned after epoch {trial.pruned_at}", "FAIL": f"failed: {trial.error}",
            "INTERRUPTED": f"interrupted: {trial.interrupted}"}.get(trial.state, "")
    params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    return f"trial {trial.number}: {what}  ({params})"


def segment_line(trial: TrialRecord, seg: dict[str, Any]) -> str:
    """A PBT segment's line: which member trained which epochs, from whose state, with what, to what value."""
    value = seg.get("values", {}).get(seg["end"])
    ended = f"{value:.4g} at epoch {seg['end']}" if value is not None else f"{trial.status or 'no value'}"
    came = ""
    if seg["copied_from"] is not None:
        how = ", ".join(f"{key} {change}" for key, change in seg["changed"].items())
        came = f", copied member {seg['copied_from']} ({how})"
    from dltune.study.pbt_search import settings_of

    settings = ", ".join(f"{k}={_short(v)}" for k, v in settings_of(trial.params).items())  # those it trained with
    return (f"trial {trial.number}: member {seg['member']}, epochs {seg['start'] + 1}-{seg['end']}{came}: {ended}  "
            f"({settings})")


def shown(progress: StudyProgress) -> Callable[[TrialRecord], None]:
    """An on_trial hook that shows each trial on `progress` (the best so far by the first objective)."""
    def show(trial: TrialRecord) -> None:
        progress.ended(trial_line(trial), trial.state in ("COMPLETE", "PRUNED"),
                       trial.values[0] if trial.state == "COMPLETE" and trial.values else None, f"trial {trial.number}")

    return show


def _setting(key: str, value: object) -> str:
    """A trial's setting in its row: a PBT member's train.changes as its schedule reads."""
    from dltune.report.tune_report import changes_text

    if key == "train.changes" and isinstance(value, list):
        return changes_text(value)
    return f"{key}={_short(value)}"


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def run(args: argparse.Namespace) -> int:
    from dltune.cli.progress import StudyProgress
    from dltune.report.tune_report import top_trials, write_tune_report
    from dltune.study.studies import first_direction
    from dltune.study.tune import tune

    optuna_logs(logging.ERROR)
    logging.getLogger("dltune.devices").setLevel(logging.INFO)  # the GPU of each --jobs worker, on stderr
    config = config_from(args)
    stem = Path(args.config).stem
    out = Path(args.out or Path("runs") / f"{stem}-search")
    maximize = first_direction(config) == "maximize"
    with said_on_interrupt(lambda: CUT_SHORT), interruptible() as interrupted, \
            StudyProgress("tune", sys.stderr if args.json else sys.stdout, maximize) as progress:
        data = tune(config, out_dir=out, trials=args.trials, more=args.more, timeout=args.timeout, jobs=args.jobs,
                    storage=args.storage, study=args.study, experiment=stem, on_trial=shown(progress),
                    on_start=started(progress), should_stop=interrupted, backend=args.backend,
                    address=args.address, enqueue=args.enqueue)

    report = write_tune_report(data, out / "report.html")
    note = no_complete_note(data, config, args.timeout, out)
    if args.json:
        print_json({**summary(data, out, report), "note": note})
    else:
        show(data, out, report, top_trials(data), note)
    return exit_code(data, report)


def exit_code(data: TuneData, report: Path) -> int:
    """0 for a search that holds a completed trial; 1, said on stderr, for one that stopped as trial after trial
    failed, or that ended with no completed trial (pruned, failed and interrupted ones are no result to use)."""
    if data.stopped:
        return failed("tune", f"{data.stopped}; see {report}")
    if data.best:
        return 0
    if data.pruner == "pbt":
        paused = sum(t.state == "PRUNED" for t in data.trials)
        return failed("tune", f"no member trained to the end yet ({paused} segments of earlier generations ended); "
                              f"see {report}")
    said = {"PRUNED": "pruned", "FAIL": "failed", "INTERRUPTED": "interrupted"}
    counts = {state: sum(t.state == state for t in data.trials) for state in said}
    ended = ", ".join(f"{n} {said[state]}" for state, n in counts.items() if n)
    return failed("tune", f"no trial completed ({ended} of {len(data.trials)}); see {report}" if data.trials else
                  f"no trial ran; see {report}")


def started(progress: StudyProgress) -> Callable[[int, int], None]:
    """An on_start hook: the count on the bar, and one line when the study holds its target already."""
    def start(finished: int, target: int) -> None:
        progress.start(finished, target)
        if finished >= target:
            has = f"{finished} of {target}" if finished == target else f"{finished} (more than {target})"
            progress.line(f"the study has {has} trials; --more N adds N")

    return start


def summary(data: TuneData, out: Path, report: Path) -> dict:
    from dltune.study.tune import BEST_PRUNED

    counts = {s: sum(t.state == s for t in data.trials) for s in ("COMPLETE", "PRUNED", "FAIL", "INTERRUPTED",
                                                                  "RUNNING", "WAITING")}
    best = [t for t in data.trials if t.number in data.best]
    return {"study": data.study, "objectives": data.objectives, "directions": data.directions,
            "trials": {k.lower(): v for k, v in counts.items()},
            "trial_list": [{"number": t.number, "state": t.state.lower(), "values": t.values, "params": t.params,
                            "epochs": len(t.epochs), "reason": _reason(t)} for t in data.trials],
            "epochs": _epochs_trained(data),
            "best": [{"number": t.number, "values": t.values, "params": t.params, "test": t.test} for t in best],
            "importances": data.importances, "best_config": str(out / "best.toml") if data.best else None,
            "best_pruned": data.best_pruned, "rungs_moved": data.rungs_moved,
            "best_pruned_config": str(out / BEST_PRUNED) if data.best_pruned_config_toml else None,
            "stopped": data.stopped, "report": str(report)}


def _epochs_trained(data: TuneData) -> int:
    """The epochs the search trained: each trial's; a PBT segment's own (its last holds its whole lineage's history)."""
    if data.pruner == "pbt":
        return sum(t.pbt["end"] - t.pbt["start"] for t in data.trials
                   if t.pbt is not None and t.state in ("COMPLETE", "PRUNED"))
    return sum(len(t.epochs) for t in data.trials)


def _reason(trial: TrialRecord) -> str | None:
    """Why a trial ended as it did, where that needs saying: a failure's error, an interrupt, a pruning."""
    return {"FAIL": trial.error, "INTERRUPTED": trial.interrupted,
            "PRUNED": f"pruned after epoch {trial.pruned_at}" if trial.pruned_at else None}.get(trial.state)


def no_complete_note(data: TuneData, config: ExperimentConfig, timeout: float | None, out: Path) -> str | None:
    """Why no trial completed and what to do, when none did; None otherwise."""
    from dltune.report.cells import plural
    from dltune.study.asha import rungs
    from dltune.study.engines import PRUNERS
    from dltune.study.tune import BEST_PRUNED

    if data.best:
        return None
    counts = summary(data, out, out)["trials"]
    epochs = config.train.epochs
    if not data.trials:
        return "No trial ran: the search ended before its first trial (a longer --timeout gives it time)."
    if data.pruner == "pbt":  # its earlier generations are paused, not pruned: the search goes on from them
        within = f" within the --timeout of {timeout:g} s" if timeout is not None else ""
        return (f"No member has trained all {plural(epochs, 'epoch')} yet{within}: {counts['pruned']} segments of "
                "earlier generations ended. The same command goes on from where the members are.")
    lines = [f"No trial completed: {counts['pruned']} pruned and {counts['fail']} failed of {len(data.trials)}, "
             f"none trained all {plural(epochs, 'epoch')}."]
    trained = [r.get("seconds", 0.0) + r.get("eval_seconds", 0.0) for t in data.trials for r in t.epochs]
    if counts["pruned"]:
        search = config.search
        ran = f"in its --timeout of {timeout:g} s it started {len(data.trials)}" if timeout is not None \
            else f"it started {len(data.trials)}"
        full = f" (a full trial trains for about {statistics.median(trained) * epochs:.1f} s here)" if trained else ""
        if PRUNERS.get(search.pruner).pauses:
            stops = rungs(search.min_epochs, search.reduction_factor, epochs)
            need = search.reduction_factor ** len(stops)
            lines.append(f"ASHA lets 1 in {search.reduction_factor} trials go on from each rung (epochs "
                         f"{', '.join(map(str, stops))} of {epochs}), so a trial completes once about {need} have "
                         f"started; {ran}{full}.")
        else:
            lines.append(f"The {search.pruner} pruner stopped them before the end; {ran}{full}.")
        lines.append("Give the search a longer --timeout, or fewer rungs (a larger "
                     "search.min_epochs or search.reduction_factor, or search.pruner = \"none\").")
    if data.best_pruned_config_toml:
        lines.append(f"{out / BEST_PRUNED}: the experiment of trial {data.best_pruned}, the pruned trial that went "
                     "furthest and did best there; it was NOT trained to the end (`dltune train` trains it).")
    elif counts["fail"]:
        lines.append("The failed trials' errors are above, and in the report.")
    return "\n".join(lines)


def show(data: TuneData, out: Path, report: Path, top: list[TrialRecord], note: str | None) -> None:
    from rich.table import Table

    from dltune.report.cells import plural
    from dltune.report.tune_data import objective_label, ranked
    from dltune.report.tune_report import objective_text

    out_console = console()
    s = summary(data, out, report)
    front = set(data.best) if len(data.objectives) > 1 else set()
    if top:
        rows = top + [t for t in ranked(data, [t for t in data.trials if t.number in front]) if t not in top]
        title = f"{data.study}: top trials by {data.objectives[0]} ({data.directions[0]})"
        if front:
            title += f"; * marks the Pareto front ({plural(len(front), 'trial')})"
        table = Table(title=title)
        table.add_column("trial", justify="right")
        if front:
            table.add_column("front", justify="center")
        arrows = {"maximize": "\u2191", "minimize": "\u2193"}
        for name, direction in zip(data.objectives, data.directions, strict=False):
            table.add_column(f"{objective_label(name)} {arrows[direction]}", justify="right")
        table.add_column("epochs", justify="right")
        table.add_column("settings")
        for t in rows:
            marks = ["*" if t.number in front else ""] if front else []
            table.add_row(str(t.number), *marks,
                          *(objective_text(o, v) for o, v in zip(data.objectives, t.values or [], strict=False)),
                          str(len(t.epochs)), ", ".join(_setting(k, v) for k, v in t.params.items()))
        out_console.print(table)
    interrupted = s["trials"]["interrupted"]
    if data.pruner == "pbt":  # PBT's trials are its members' generations: the last complete, the others paused
        out_console.print(f"PBT: {s['trials']['complete']} members trained to the end, {s['trials']['pruned']} "
                          f"segments of earlier generations, {s['trials']['fail']} failed · "
                          f"{plural(s['epochs'], 'epoch')} trained", highlight=False)
    else:
        out_console.print(f"trials: {s['trials']['complete']} complete, {s['trials']['pruned']} pruned, "
                          + (f"{interrupted} interrupted (queued again), " if interrupted else "")
                          + f"{s['trials']['fail']} failed · {plural(s['epochs'], 'epoch')} trained", highlight=False)
    for moved in data.rungs_moved:  # ASHA's check of its own assumption (study.rank_check)
        out_console.print(f"pruning: {moved['said']}", highlight=False)
    if note:
        out_console.print(note, highlight=False)
    if data.importances:
        out_console.print("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in data.importances.items()),
                          highlight=False)
    if data.best:
        out_console.print(f"best experiment: {out / 'best.toml'} (dltune train {out / 'best.toml'})", highlight=False)
    out_console.print(f"report: {report}", highlight=False)
