"""Settings found before training (`[train] auto`, `dltune train --auto lr,batch`).

"batch" runs the batch finder (throughput mode, over the batches that leave 16 steps an epoch) and "lr"
the lr range test, both on the training split and in that order, so that the lr is found at the batch the
run will use. The batch finder rescales the lr for the new batch as `batch-find --couple-lr` does:
linearly for SGD, by the square root for the adaptive optimizers (Adam and its kin), the two rules of thumb
of the large-batch literature; with "lr" too, that lr is the fallback where the lr range test is not confident
(bench_suite: keeping the run's own lr at a batch 4-8 times larger left tabular runs short of the default's
accuracy). The run
then trains with what they chose; their time is part of the run's (`RunResult.auto["seconds"]`), and the
run folder records what was chosen and why (metrics.json's "auto"). Its config.toml holds the chosen
values and no `train.auto`, so that it trains the same run again without the finders.

With `schedule.name = "onecycle"` the found lr is the cycle's peak (optim.lr is OneCycleLR's max_lr), as
fastai's `lr_find` + `fit_one_cycle` recipe uses it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from dltune.errors import MissingExtra
from dltune.experiment.config import ExperimentConfig, load_config, override
from dltune.parallel import Nodes
from dltune.run.assembly import Data, Model
from dltune.run.checks import check
from dltune.run.loop import OnEpoch, fit
from dltune.run.results import RunResult
from dltune.tracking import Run, require_trackers
from dltune.tuner.finders import batch_find, lr_find

__all__ = ["find_settings", "train"]

LINEAR_COUPLING = ("sgd",)  # optimizers whose lr scales linearly with the batch; the others by its square root
# the batch finder tries only batches that leave this many optimizer steps per epoch: throughput alone would
# choose a batch of half the training set, and a run that takes few epochs needs steps, not samples/s
MIN_STEPS = 16


def train(config: ExperimentConfig | str | Path, on_epoch: OnEpoch | None = None, *, data: Data | None = None,
          model: Model | None = None, out_dir: str | Path | None = None, track: Run | None = None,
          nodes: Nodes | None = None, resume: bool = False) -> RunResult:
    """Check the experiment, find the settings that `train.auto` names, then train one model with them
    (`run.loop.fit`, which says what `on_epoch` and the other arguments do) and evaluate it on the test split. The
    finders run in this process, also before a distributed run (parallel.strategy). `resume`: the run in `out_dir`
    goes on with what its finders chose then (its config.toml)."""
    if not isinstance(config, ExperimentConfig):
        config = load_config(config)
    if resume and config.train.auto and out_dir is not None:
        config = load_config(Path(out_dir) / "config.toml")
    check(config, user_data=data is not None, user_model=model is not None)
    try:
        require_trackers(config)  # a missing package is said before a finder or the run trains
    except MissingExtra:
        _release(out_dir)
        raise
    if not config.train.auto:
        return fit(config, on_epoch, data=data, model=model, out_dir=out_dir, track=track, nodes=nodes, resume=resume)
    try:
        chosen, found = find_settings(config, data=data, model=model)
    except BaseException:
        _release(out_dir)
        raise
    return fit(chosen, on_epoch, data=data, model=model, out_dir=out_dir, track=track, auto=found, nodes=nodes)


def find_settings(config: ExperimentConfig, *, data: Data | None = None,
                  model: Model | None = None) -> tuple[ExperimentConfig, dict[str, Any]]:
    """The experiment with the settings of `train.auto` found and applied (and `train.auto` cleared), and the
    record of what was chosen, why, and the finders' seconds."""
    auto = config.train.auto
    found: dict[str, Any] = {}
    start = time.perf_counter()
    if "batch" in auto:
        began = time.perf_counter()
        # the lr scaled for the new batch: the run's lr, or lr-find's fallback where its test is not confident
        coupling: Literal["linear", "sqrt"] = "linear" if config.optim.name in LINEAR_COUPLING else "sqrt"
        batch = batch_find(config, couple_lr=coupling, min_steps=MIN_STEPS, data=data, model=model)
        speeds = batch.samples_per_second
        fastest = max(speeds, key=lambda b: speeds[b])
        found["batch"] = {
            "before": config.batch.size, "chosen": batch.chosen,
            "why": f"the smallest batch within 5% of the best throughput ({speeds[fastest]:,.0f} samples/s at "
                   f"{fastest}) of those that leave {MIN_STEPS} steps an epoch: {speeds[batch.chosen]:,.0f} samples/s",
            "samples_per_second": {str(b): v for b, v in speeds.items()},
            "lr_coupling": coupling, "seconds": time.perf_counter() - began}
        changes: dict[str, Any] = {"batch.size": batch.chosen}
        if batch.lr is not None:
            changes["optim.lr"] = batch.lr
            found["batch"]["why"] += f"; optim.lr {config.optim.lr:.3g} -> {batch.lr:.3g} ({coupling} coupling)"
        config = override(config, changes)
    if "lr" in auto:
        began = time.perf_counter()
        curve = lr_find(config, data=data, model=model)
        peak = " (the one-cycle schedule's peak)" if config.schedule.name == "onecycle" else ""
        chosen, why = curve.to_use(config.optim.lr)
        if curve.confident:
            why += f" at batch {config.batch.size}{peak}"
        found["lr"] = {"before": config.optim.lr, "chosen": chosen, "why": why, "confident": curve.confident,
                       "rule": curve.rule, "suggested": curve.suggested, "suggestions": curve.suggestions,
                       "reasons": curve.reasons, "seconds": time.perf_counter() - began}
        config = override(config, {"optim.lr": chosen})
    found["seconds"] = time.perf_counter() - start
    return override(config, {"train.auto": []}), found


def _release(out_dir: str | Path | None) -> None:
    """A run folder claimed for this run (`dltune train` claims it first) that the finders never wrote to."""
    if out_dir is not None and Path(out_dir).is_dir() and not any(Path(out_dir).iterdir()):
        Path(out_dir).rmdir()
