"""`dltune ablate CONFIG`: the baseline against every variant over seeds; a table and an HTML report."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dltune.cli.common import add_config_args, add_json_arg, config_from, failed, optuna_logs

if TYPE_CHECKING:
    from dltune.study.records import AblationData, PairResult


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablate", help="compare the baseline with each variant of [ablation] over seeds",
                       description="Run every (variant, seed) pair of the experiment's [ablation] that the storage "
                                   "does not hold yet, then print the table and write the HTML report. Run it "
                                   "again to resume a stopped ablation.")
    add_config_args(p)
    p.add_argument("--seeds", type=int, help="seeds per variant (default: ablation.seeds)")
    p.add_argument("--jobs", type=int, default=1, help="parallel processes; torch threads are divided among them "
                                                          "(default: %(default)s)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/<config name>-ablation)")
    p.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: sqlite:///DIR/study.db)")
    add_json_arg(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not above: `dltune --help` does not wait for torch and Optuna
    from dltune.cli.progress import StudyProgress
    from dltune.cli.report_cmd import show
    from dltune.run.metrics import extra_metrics, higher_is_better
    from dltune.study.ablate import ablate

    optuna_logs(logging.WARNING)
    logging.getLogger("dltune.devices").setLevel(logging.INFO)  # the GPU of each --jobs worker, on stderr
    config = config_from(args)
    out = Path(args.out or Path("runs") / f"{Path(args.config).stem}-ablation")
    stream = sys.stderr if args.json else sys.stdout
    metric = config.ablation.metric
    maximize = metric == "auto" or higher_is_better(metric, extra_metrics(config.metrics.extra, config.code.paths))

    with StudyProgress("ablate", stream, maximize) as display:
        def progress(result: PairResult, done: int, total: int) -> None:
            value = "diverged" if result.metric is None else f"{result.metric:.4f}"
            display.start(done - 1, total)
            display.ended(f"[{done:>{len(str(total))}}/{total}] {result.variant} seed {result.seed}: {value} "
                          f"({result.train_seconds:.1f}s of training)", True, result.metric,
                          f"{result.variant} seed {result.seed}")

        data = ablate(config, out_dir=out, seeds=args.seeds, jobs=args.jobs, storage=args.storage,
                      name=Path(args.config).stem, on_result=progress)
    return show(data, out, args.json) or exit_code(data, out)


def exit_code(data: AblationData, out: Path) -> int:
    """1 when every run diverged: no variant, the baseline included, has a value to compare (the table is empty
    of numbers). Some diverged runs are a finding, shown in the table: 0."""
    from dltune.report.cells import plural

    if not data.results or any(r.status != "diverged" for r in data.results):
        return 0
    return failed("ablate", f"every run diverged ({plural(len(data.results), 'run')}): no variant has a "
                            f"{data.metric} to compare; see {out / 'report.html'}")
