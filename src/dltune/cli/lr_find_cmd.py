"""`dltune lr-find CONFIG`: the learning-rate range test, with suggestions, their agreement and a plot."""

from __future__ import annotations

import argparse
from pathlib import Path

from dltune.cli.common import add_config_args, add_json_arg, config_from, console, print_json
from dltune.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lr-find", help="find a learning rate by a range test (loss against an increasing lr)",
                       description="Sweep the lr over training steps on a fresh copy of the model; read the loss curve "
                                   "by five rules, suggest the one chosen for the schedule, and say whether the curve "
                                   "supports it.")
    add_config_args(p)
    p.add_argument("--min-lr", type=float, default=1e-7, metavar="LR",
                   help="learning rate of the first step (default: %(default)s)")
    p.add_argument("--max-lr", type=float, default=10.0, metavar="LR",
                   help="learning rate of the last step; the sweep stops earlier if the loss diverges "
                        "(default: %(default)s)")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps of the sweep (default: %(default)s)")
    p.add_argument("--linear", action="store_true", help="sweep linearly instead of exponentially")
    p.add_argument("--plot", metavar="PNG", help="where to draw the curve; a file there is replaced (default: "
                                                 "runs/<config>-lr-find.png, or -2, -3, ... beside earlier ones)")
    p.add_argument("--apply", metavar="OUT.toml", help="write the experiment with optim.lr set to the suggestion "
                                                       "to this new file (an existing file is refused)")
    add_json_arg(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not above: `dltune --help` does not wait for torch and matplotlib
    from dltune.experiment.config import override, to_toml
    from dltune.files import write_text
    from dltune.report.finder_plots import lr_plot, save
    from dltune.tuner.finders import lr_find

    config = config_from(args)
    if args.apply and Path(args.apply).exists():  # refused before the sweep, not after it
        raise ConfigError(f"--apply {args.apply}: the file exists; name a new file (an experiment file is never "
                          "replaced)")
    result = lr_find(config, min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps,
                     mode="linear" if args.linear else "exp")
    plot, replaced = save(lr_plot(result), args.plot, Path("runs") / f"{Path(args.config).stem}-lr-find.png")
    applied = None
    use, why = result.to_use(config.optim.lr)
    if args.apply:
        if not result.confident:
            console().print(f"no file written: {why} ({use:.2e})", highlight=False)
        else:
            applied = write_text(args.apply, to_toml(override(config, {"optim.lr": use})))
    if args.json:
        print_json({"suggested": result.suggested, "rule": result.rule, "suggestions": result.suggestions,
                    "spread_decades": result.spread_decades, "confident": result.confident,
                    "reasons": result.reasons, "steps": len(result.lrs), "stopped_early": result.stopped_early,
                    "lrs": result.lrs, "losses": result.losses, "smoothed": result.smoothed,
                    "use": use, "use_why": why, "plot": str(plot), "applied": str(applied) if applied else None})
        return 0
    out = console()
    best = min(range(len(result.smoothed)), key=lambda i: result.smoothed[i])
    out.print(f"swept {len(result.lrs)} steps from {result.lrs[0]:.1e} to {result.lrs[-1]:.1e}"
              f"{' (stopped: the loss diverged)' if result.stopped_early else ''}; smoothed loss "
              f"{result.smoothed[0]:.3f} -> lowest {result.smoothed[best]:.3f} at lr {result.lrs[best]:.2e}",
              highlight=False)
    width = max(map(len, result.suggestions), default=0)
    for rule, lr in result.suggestions.items():
        out.print(f"  {rule:>{width}}: {lr:.2e}", highlight=False)
    verdict = "confident" if result.confident else "NOT confident: " + "; ".join(result.reasons)
    out.print(f"rules agree within {result.spread_decades:.2f} decades; {verdict}", highlight=False)
    if result.suggested is not None:
        schedule = config.schedule.name
        role = "a constant lr" if schedule == "constant" else f"the peak of the {schedule} schedule"
        out.print(f"suggested lr: {result.suggested:.2e} ({result.rule} rule, as {role})", highlight=False)
    if not result.confident:
        out.print(f"lr to use: {use:.2e}: {why}", highlight=False)
    out.print(f"plot: {plot}{' (replaced the earlier file)' if replaced else ''}", highlight=False)
    if applied:
        out.print(f"experiment with that lr: {applied}", highlight=False)
    return 0
