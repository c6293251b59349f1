"""`dltune train CONFIG`: train one configuration and show its test metrics (`--resume RUN_DIR`: go on with one)."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from dltune.cli.common import (
    add_config_args,
    add_json_arg,
    config_from,
    console,
    failed,
    print_json,
    said_on_interrupt,
)
from dltune.errors import ConfigError

if TYPE_CHECKING:
    from dltune.experiment.config import ExperimentConfig
    from dltune.parallel import Nodes
    from dltune.run.results import Divergence, RunResult


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one configuration and evaluate it on the test split",
                       description="Train the experiment in CONFIG; the run folder gets its resolved config, "
                                   "metrics, weights (safetensors) and environment. A run that was killed goes on "
                                   "with --resume RUN_DIR, from its last checkpoint (train.checkpoint_every).")
    add_config_args(p, optional=True)
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/<config name>-<date>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="go on with the run in RUN_DIR (killed or interrupted) from its last checkpoint, as its "
                        "config.toml says; without one, it trains again from the start (give no CONFIG)")
    p.add_argument("--auto", type=finders_list, metavar="lr,batch",
                   help="find these settings on the training split before training: lr (the lr range test) and "
                        "batch (the batch finder); as [train] auto in the file (default: the file's)")
    g = p.add_argument_group("several processes and machines (torch.distributed through torchrun)")
    g.add_argument("--nproc", type=int, metavar="N",
                   help="train with DistributedDataParallel in N processes on this machine (parallel.strategy = ddp, "
                        "parallel.nproc = N); batch.size stays the global batch")
    g.add_argument("--nnodes", type=int, default=1, metavar="M",
                   help="machines in the run; start the same command on each (default: 1)")
    g.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                   help="where the machines meet: a free port on the first machine, the same on every machine")
    add_json_arg(p)
    p.set_defaults(run=run)


def finders_list(text: str) -> list[str]:
    """An argparse type for --auto: "lr", "batch" or both, comma-separated."""
    from dltune.experiment.sections import AUTO_FINDS

    names = [n.strip() for n in text.split(",")]
    if not names or any(n not in AUTO_FINDS for n in names) or len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(f"expected lr, batch or lr,batch; got {text!r}")
    return names


def run(args: argparse.Namespace) -> int:
    # imported here, not above: `dltune --help` does not wait for torch
    from dltune.cli.progress import EpochDisplay
    from dltune.experiment.config import override
    from dltune.parallel import Nodes
    from dltune.run.checks import check
    from dltune.run.results import claim_run_dir
    from dltune.tracking import Run
    from dltune.tuner.auto import train

    if args.resume is not None:
        return resume(args)
    if args.config is None:
        raise ConfigError("CONFIG: give an experiment file, or --resume RUN_DIR")
    if args.auto is not None:
        args.overrides = [*args.overrides, f"train.auto={json.dumps(args.auto)}"]  # a TOML literal too
    nodes = Nodes(args.nnodes, args.rdzv_endpoint, Path(args.config).stem)
    config = config_from(args)
    if args.nproc is not None:
        if args.nproc < 1:
            raise ConfigError(f"--nproc: must be at least 1, got {args.nproc}")
        if config.parallel.strategy == "pipeline":
            raise ConfigError("--nproc: starts data-parallel (ddp) processes, but parallel.strategy is \"pipeline\", "
                              "whose processes are its parallel.stages; leave --nproc out")
        ddp = args.nproc * nodes.nnodes > 1
        config = override(config, {"parallel.nproc": args.nproc, "parallel.strategy": "ddp" if ddp else "none"})
    check(config)
    # created now, so that no other run takes it; train() removes it again if the run fails
    run_dir = claim_run_dir(args.out, Path(args.config).stem)
    # With --json, stdout carries only the JSON document; progress goes to stderr.
    said = sys.stderr if args.json else sys.stdout
    if config.parallel.strategy != "none":  # torchrun's processes take seconds before the first epoch
        print(starting(config, nodes), file=said, flush=True)
    with EpochDisplay(config.train.epochs, said) as display, kept_on_stop(run_dir):
        result = train(config, on_epoch=display, out_dir=run_dir,
                       track=Run(Path(args.config).stem, run_dir.name, folder=run_dir.parent), nodes=nodes)
    if args.json:
        print_json(result.to_dict())
    else:
        show(result, args.config)
    return exit_code(result.status, result.divergence, result.run_dir)


def resume(args: argparse.Namespace) -> int:
    """--resume RUN_DIR: the run goes on in its folder, as its config.toml says."""
    from dltune.cli.progress import EpochDisplay
    from dltune.experiment.config import load_config
    from dltune.run.checkpoints import checkpoint_epoch, held
    from dltune.run.results import Divergence, complete_run, recorded_result
    from dltune.tracking import Run
    from dltune.tuner.auto import train

    given = [flag for flag, value in (("CONFIG", args.config), ("--set", args.overrides), ("--out", args.out),
                                      ("--auto", args.auto), ("--nproc", args.nproc),
                                      ("--rdzv-endpoint", args.rdzv_endpoint)) if value]
    if given:
        raise ConfigError(f"--resume: a run goes on as its config.toml says; leave out {', '.join(given)}")
    run_dir = Path(args.resume)
    if not run_dir.is_dir():
        raise ConfigError(f"--resume {run_dir}: no such folder")
    if not (run_dir / "config.toml").is_file():
        raise ConfigError(f"--resume {run_dir}: not a run folder (no config.toml)")
    if complete_run(run_dir):  # it ended, perhaps as it was killed: a rerun of the command has nothing to do
        print(f"{run_dir}: the run is complete (metrics.json); nothing to resume", file=sys.stderr)
        recorded = recorded_result(run_dir)
        if args.json:
            print_json(recorded)
        where = recorded.get("divergence")
        return exit_code(recorded["status"], Divergence(**where) if where else None, run_dir)
    config = load_config(run_dir / "config.toml")
    epoch = None if held(run_dir) else checkpoint_epoch(run_dir)  # a run training elsewhere: train() refuses it
    said = sys.stderr if args.json else sys.stdout
    if epoch is not None:
        print(f"resuming {run_dir} from its checkpoint after epoch {epoch} of {config.train.epochs}", file=said)
    elif not held(run_dir):
        print(f"{run_dir} has no checkpoint (killed before its first): it trains again from epoch 1", file=said)
    with EpochDisplay(config.train.epochs, said) as display, kept_on_stop(run_dir):
        result = train(config, on_epoch=display, out_dir=run_dir, resume=True,
                       track=Run(run_dir.name, run_dir.name, folder=run_dir.parent))
    if args.json:
        print_json(result.to_dict())
    else:
        show(result, str(run_dir / "config.toml"))
    return exit_code(result.status, result.divergence, run_dir)


def exit_code(status: str, divergence: Divergence | None, run_dir: str | Path | None) -> int:
    """0 for a run that ended (completed, or stopped early); 1 for a diverged one, with where on stderr."""
    if status != "diverged":
        return 0
    where = ""
    if divergence is not None:  # a loss read back from metrics.json is null where it was nan or inf
        loss = "not finite" if divergence.loss is None else divergence.loss
        where = f" at epoch {divergence.epoch} (loss {loss}, lr {divergence.lr:.3g})"
    return failed("train", f"the run diverged{where}; see {run_dir}")


def starting(config: ExperimentConfig, nodes: Nodes) -> str:
    """What a distributed run starts, said before torchrun's processes begin."""
    p = config.parallel
    n = p.nproc if p.strategy == "ddp" else p.stages
    what = f"{n} {p.strategy} process{'' if n == 1 else 'es'}"
    what += " (one per stage)" if p.strategy == "pipeline" else ""
    where = f" on this machine, one of {nodes.nnodes} machines that meet at {nodes.rdzv_endpoint}" \
        if nodes.nnodes > 1 else ""
    return (f"starting {what} through torchrun{where}; each process imports torch and loads the data, and they meet, "
            "before the first epoch")


def kept_on_stop(run_dir: Path) -> AbstractContextManager[None]:
    """On Ctrl-C: where the run's checkpoint (train.checkpoint_every) is kept, say how the run goes on from it."""
    from dltune.run.results import after_checkpoint

    def said() -> str | None:
        after = after_checkpoint(run_dir)
        return None if after is None else f"the run stopped; its checkpoint is kept, {after}"

    return said_on_interrupt(said)


def show(result: RunResult, config_path: str) -> None:
    from rich.table import Table

    from dltune.cli.progress import describe_epoch
    from dltune.experiment.sections import AUTO_FINDS
    from dltune.report.cells import plural

    out = console()
    if result.divergence is not None:
        out.print(describe_epoch(result.epochs[-1], result.config.train.epochs), highlight=False)
        out.print(result.divergence.describe(), highlight=False, soft_wrap=True)
        out.print(f"The loss grew without bound at lr {result.divergence.lr:.3g}. Try a smaller optim.lr "
                  f"(`dltune lr-find {config_path}` suggests one), gradient clipping (regularization.clip_norm), "
                  "or a warmup (schedule.warmup_epochs).", highlight=False, soft_wrap=True)
        out.print(f"status diverged · {plural(len(result.epochs), 'epoch')} · no test metrics", highlight=False)
        out.print(f"run folder: {result.run_dir}", highlight=False)
        return
    table = Table(title=f"test split: {result.data['sizes']['test']} examples")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.test.items():
        shown = f"{value:.2%}" if name in ("accuracy",) else f"{value:.4f}"
        table.add_row(f"test.{name}", shown)
    out.print(table)
    out.print(f"status {result.status} · {plural(len(result.epochs), 'epoch')} · {result.parameters:,} parameters",
              highlight=False)
    compiled = f" · compiling {result.compile_seconds:.2f}s before it" if result.config.train.compile else ""
    processes = result.environment.get("processes")
    spread = f" · {processes} processes ({result.environment['strategy']})" if processes else ""
    precision = result.config.train.precision
    skipped = sum(e["train"].get("skipped_steps", 0) for e in result.epochs)
    in_precision = (f" · {precision}" if precision != "fp32" else "") + (
        f" ({plural(skipped, 'step')} skipped: fp16 overflows, the GradScaler's scale halved each time)"
        if skipped else "")
    out.print(f"training {result.train_seconds:.2f}s · {result.samples_per_second:,.0f} samples/s{in_precision}"
              f"{compiled}{spread}", highlight=False, soft_wrap=True)
    if result.auto:
        for finder in ("batch", "lr"):
            if finder in result.auto:
                found = result.auto[finder]
                out.print(f"auto {AUTO_FINDS[finder]} = {found['chosen']:.3g}: {found['why']} "
                          f"({found['seconds']:.2f}s)", highlight=False, soft_wrap=True)
        out.print(f"finders {result.auto['seconds']:.2f}s before training; the run folder's config.toml holds "
                  "what they chose", highlight=False)
    if result.transfer:
        out.print(result.transfer["summary"], highlight=False, soft_wrap=True)
    if result.best_epoch is not None:
        out.print(f"early stopping: best epoch {result.best_epoch} by val.loss", highlight=False)
    if result.threshold is not None:
        out.print(f"decision threshold {result.threshold:.4f} (chosen on the validation split)", highlight=False)
    out.print(f"run folder: {result.run_dir}", highlight=False)
