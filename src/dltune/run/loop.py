"""The training loop: fit(config, on_epoch=None) -> RunResult, on an experiment that `run.checks.check` passed.
The public entry is `dltune.train` (tuner.auto), which checks the experiment, finds the settings of train.auto,
then calls fit."""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from dltune.data import LoaderSplits
from dltune.epochs import EpochRecord, TrainMetrics
from dltune.errors import ConfigError
from dltune.experiment.config import ExperimentConfig, to_toml
from dltune.models import count_parameters
from dltune.parallel import Nodes, Pipeline, Ranks, backend_for, launch, split_stages
from dltune.run.assembly import Data, Model, Setup, batcher, compiled_for_training, optimizing, setup
from dltune.run.checkpoints import Checkpoint, Paused, has_checkpoint, load_checkpoint, save_checkpoint
from dltune.run.checks import check_sharded, check_world
from dltune.run.counters import Progress, Sums
from dltune.run.environment import environment
from dltune.run.evaluation import evaluate_split, length, outputs
from dltune.run.metrics import choose_threshold, positive_probability
from dltune.run.results import Divergence, RunResult, Status, run_claimed, write_run
from dltune.run.runtime import cores, torch_settings, warn_if_crowded
from dltune.run.strategies import DataParallel, Here, OnEpoch, Pipelined, Strategy
from dltune.techniques.augment import build_augment
from dltune.techniques.batching import batch_sizes, lr_scales, optimizer_steps
from dltune.techniques.losses import resolve_loss_name
from dltune.techniques.optim import changes_at, lr_factor, set_changed
from dltune.techniques.regularization import (
    EarlyStopping,
    build_penalty,
    clip_gradients,
    decay_weights,
    penalized_weights,
)
from dltune.tracking import Run, named, open_trackers, told

__all__ = ["OnEpoch", "RunResult", "fit", "fit_ranked"]

def fit(
    config: ExperimentConfig,
    on_epoch: OnEpoch | None = None,
    *,
    data: Data | None = None,
    model: Model | None = None,
    out_dir: str | Path | None = None,
    track: Run | None = None,
    auto: dict[str, Any] | None = None,
    nodes: Nodes | None = None,
    resume: bool = False,
) -> RunResult:
    """Train one model as `config` says and evaluate it on the test split (`config` checked: dltune.train does).

    `on_epoch(epoch, record)` is called after every epoch (1-based) with that epoch's record;
    returning "stop" ends the run with status "stopped" (how a search prunes). A loss that
    becomes NaN or infinite ends it with status "diverged" (`result.divergence` says where). From
    Python, `data` replaces data.name (a torch Dataset split by the [data] fractions, ready splits, arrays
    (x, y) or a loader) and `model` replaces model.name (a factory, or an nn.Module that the run copies);
    see `assembly.setup`. With `out_dir`, the run's config, metrics, weights and environment are written
    there: the folder is claimed when training starts (a folder that holds a run, or that another process
    claimed, is refused) and released if training raises. [tracking] logs the run to TensorBoard and
    MLflow as `track` names it (experiment, run name, tags; tracking.experiment wins), opened before
    training starts. `auto`: what the finders chose before this run (dltune.tuner.auto, which finds the
    settings of train.auto and then calls this with them), recorded with the run.

    parallel.strategy "ddp" or "pipeline" trains in several processes, started here through torchrun (`nodes`:
    the machines, for a run on more than one); this process follows them, calls `on_epoch` with rank 0's
    records and returns the result as a one-process run does. `data` and `model` objects cannot cross to
    those processes: name them by import path.

    train.checkpoint_every = K saves the run's whole state in `out_dir`/checkpoint/ every K epochs; `resume=True`
    goes on from the last one (the same `config` as the run folder's config.toml; none saved: from the start): weights
    and history end as those of a run that was never stopped. `on_epoch` may also answer "pause": the state is saved
    there and `checkpoints.Paused` is raised; a run resumed later goes on exactly (ASHA's paused trials beyond
    search.max_paused wait so, on disk).
    """
    with run_claimed(out_dir, config, resume) as run_dir:
        trackers = open_trackers(config, named(config, track, run_dir))
        try:
            if config.parallel.strategy != "none":
                result = _launched(config, told(on_epoch, trackers), nodes or Nodes())
            else:
                result = _train_here(config, told(on_epoch, trackers), data, model, run_dir, resume)
            result.auto = auto
            if run_dir is not None:
                write_run(result, run_dir)
        except Paused:
            raise  # to be resumed, in this process or another: the trackers' runs stay open
        except BaseException:
            for tracker in trackers:
                tracker.fail()
            raise
        for tracker in trackers:
            tracker.end(result.to_dict(), None if run_dir is None else str(run_dir))
    return result


def _train_here(config: ExperimentConfig, on_epoch: OnEpoch | None, data: Data | None, model: Model | None,
                run_dir: Path | None = None, resume: bool = False) -> RunResult:
    """train() in this process; from the run folder's checkpoint when `resume`."""
    with torch_settings(config):
        run = setup(config, data, model)
        warn_if_crowded(torch.get_num_threads(), run.device)  # set up: what follows is training
        start = load_checkpoint(run_dir) if resume and run_dir is not None and has_checkpoint(run_dir) else None
        result = _fit(config, run, Here(on_epoch), run_dir, start)
        return _described(result, run, config)


def _described(result: RunResult, run: Setup, config: ExperimentConfig, **environment_extra: Any) -> RunResult:
    """The result with what the run trained on: the transfer's weights, the data, the environment."""
    if run.transfer is not None:
        result.transfer = {**asdict(run.transfer), "summary": run.transfer.describe()}
    result.data = {**run.splits.info, "loss": resolve_loss_name(config.loss, run.splits.task)}
    result.environment = {**environment(str(run.device), config.parallel.workers), **environment_extra}
    return result


def _launched(config: ExperimentConfig, on_epoch: OnEpoch | None, nodes: Nodes) -> RunResult:
    """train() in the processes of parallel.strategy, started through torchrun; their result, with the model."""
    p = config.parallel
    nproc = p.nproc if p.strategy == "ddp" else p.stages
    check_world(config, nproc * nodes.nnodes)
    with torch_settings(config):
        run = setup(config)  # bad data or a model that cannot be split fail here, before any process starts
        net = run.model
    if isinstance(run.splits, LoaderSplits):
        check_sharded(config, nproc * nodes.nnodes)
    if p.strategy == "pipeline":
        split_stages(net, p.stages)
    threads = p.threads or max(1, torch.get_num_threads() // nproc)
    if backend_for(p.backend, config.train.device) == "gloo":
        if nproc > cores():
            logging.getLogger("dltune").warning(
                f"parallel: {nproc} processes on {cores()} CPU cores; they take turns on the cores, and the run is "
                "slower than with fewer processes (it still trains as asked)")
        warn_if_crowded(nproc * threads, torch.device("cpu"))
    saved = launch(to_toml(config), nproc, nodes, threads, on_epoch)
    fields = saved["result"]
    divergence = fields.pop("divergence")
    net.load_state_dict(saved["state"])
    return RunResult(**fields, config=config, model=net,
                     divergence=Divergence(**divergence) if divergence is not None else None)


def fit_ranked(config: ExperimentConfig, ranks: Ranks) -> RunResult:
    """One process's part of a distributed run (dltune.run.rank): the same setup as one process, then the loop with
    this rank's share of each batch. Every rank ends with the same weights and the same result."""
    with torch_settings(config):
        run = setup(config)
        if ranks.rank:  # dropout draws apart on each rank; rank 0 draws as one process does
            torch.manual_seed(config.train.seed + ranks.rank)
        pipelined = config.parallel.strategy == "pipeline"
        strategy = (Pipelined(ranks, Pipeline(run.model, ranks, config.parallel.microbatches, config.parallel.schedule,
                                              run.loss_fn, run.device)) if pipelined
                    else DataParallel(ranks, sharded=isinstance(run.splits, LoaderSplits)))
        result = _fit(config, run, strategy)
        return _described(result, run, config, processes=ranks.world, strategy=config.parallel.strategy)


def _fit(cfg: ExperimentConfig, run: Setup, strategy: Strategy, run_dir: Path | None = None,
         start: Checkpoint | None = None) -> RunResult:
    """The loop: each epoch trains, is recorded and answered, then ends (the schedule steps, early stopping) or is
    saved. `strategy` says where the batches are stepped (run.strategies): under DDP or a pipeline every rank draws
    the same global batches and rank 0's record decides for all, so the run is the one-process run up to float
    rounding. Checkpoints (train.checkpoint_every, an answer "pause") go to `run_dir`; `start`: the checkpoint to go
    on from."""
    loop = _Loop(cfg, run, strategy, run_dir)
    progress, status, first = loop.resumed(start) if start is not None else (Progress(), "completed", 1)
    divergence = None
    for epoch in range(first, cfg.train.epochs + 1):
        record, sums = loop.train_epoch(epoch)
        progress.history.append(record)
        progress.train_seconds += record["seconds"]
        if not math.isfinite(record["train"]["loss"]):
            status, divergence = "diverged", sums.divergence(epoch, progress)
            break
        progress.steps_before += sums.n_batches
        progress.last_loss = sums.batch_losses[-1].item()
        answer = strategy.answer(epoch, record)
        if answer == "pause":  # saved before the answer's consequences; a resumed run asks again
            loop.save(epoch, progress, asking=True)
            raise Paused(epoch)
        ended = loop.settle(epoch, record, answer)
        if ended is not None:
            status = ended
            break
        if loop.checkpoint_due(epoch):
            loop.save(epoch, progress, asking=False)
    return loop.result(status, progress, divergence)


class _Loop:
    """What the loop trains with, made once in this order (the generators' draws depend on it), and the steps of an
    epoch."""

    def __init__(self, cfg: ExperimentConfig, run: Setup, strategy: Strategy, run_dir: Path | None) -> None:
        self.cfg, self.run, self.strategy, self.run_dir = cfg, run, strategy, run_dir
        self.model, self.splits, reg = run.model, run.splits, cfg.regularization
        self.precision = run.precision
        self.n_train = length(run.splits.train)
        self.sizes, self.scales = batch_sizes(cfg.batch, cfg.train.epochs), lr_scales(cfg.batch, cfg.train.epochs)
        steps = [optimizer_steps(self.n_train, s, cfg.batch.accumulate) for s in self.sizes]
        self.optimizer, self.schedule, self.freezer = optimizing(cfg, self.model, steps)
        self.penalty = build_penalty(reg, self.model)
        self.decayed = penalized_weights(self.model, reg.penalize_all) if reg.decoupled_weight_decay > 0 else None
        self.clipping = reg.clip_norm is not None or reg.clip_value is not None
        self.order = torch.Generator().manual_seed(cfg.train.seed)
        self.draws = torch.Generator().manual_seed(cfg.train.seed)
        self.augment = build_augment(reg, run.splits.input_shape, self.draws)
        self.stopper = EarlyStopping(reg.early_stopping, reg.min_delta) if reg.early_stopping else None
        self.batches = batcher(run.splits, cfg, run.device, self.order, strategy.shard())
        compiled, self.compile_seconds = (
            compiled_for_training(self.model, run, self.sizes, self.n_train) if cfg.train.compile
            else (self.model, 0.0))
        self.stepped = strategy.stepped(self.model, compiled)  # the module the training steps call
        self.size, self.sums = self.sizes[0], Sums(0.0, 0, run.device)  # the epoch's, set by train_epoch

    def train_epoch(self, epoch: int) -> tuple[EpochRecord, Sums]:
        """Train one epoch over the training split, and evaluate on the validation split: its record."""
        self.size = self.sizes[epoch - 1]
        if self.freezer.at_epoch(epoch):
            self.stepped = self.strategy.stepped(self.model, self.stepped)
        now = changes_at(self.cfg, epoch)  # train.changes: {} without any
        self.schedule.set_scale(self.scales[epoch - 1] * lr_factor(self.cfg, now))
        set_changed(self.optimizer, now)
        n_batches = math.ceil(self.n_train / self.size)
        lr = self.optimizer.param_groups[-1]["lr"]  # the head's, where layer groups have rates of their own
        self.model.train()
        sums = self.sums = Sums(lr, n_batches, self.run.device, scaled=self.precision.scaler is not None)
        accumulate = self.cfg.batch.accumulate
        start = time.perf_counter()
        for i, batch in enumerate(self.batches(self.size)):
            if self.augment is not None:  # (x, y) batches (checks): the whole global batch on every rank, the same
                batch = (self.augment(batch[0]), batch[1])  # draws as one process
            self.strategy.step(i, batch, self._backward, sums)
            if accumulate > 1 and (i + 1) % accumulate and i + 1 < n_batches:
                continue  # gradients add up until the step
            self._optimizer_step(sums)
        # the last batch is a view of the epoch's shuffled copy of the training set (assembly.batcher): let it go
        # before evaluating, and before on_epoch, where a search's trial may wait at a rung with a copy of the data
        batch = None
        train_loss = sums.mean_loss(self.strategy.total, self.n_train)  # waits for an asynchronous device
        seconds = time.perf_counter() - start
        self.strategy.gather(self.model)  # a pipeline's stages on every rank: each evaluates the whole model
        return self._record(epoch, sums, train_loss, seconds), sums

    def _backward(self, i: int, batch: Any, weight: float, n_batch: int, world: int) -> None:
        """Forward and backward of batch `i` (or this rank's share, `weight` its part of the loss), adding to the
        epoch's sums as one process would."""
        sums, accumulate = self.sums, self.cfg.batch.accumulate
        loss = self.run.loss_of(self.stepped, batch)  # the user's step, or [loss] of the model's outputs
        here = weight * n_batch / world  # this process's examples
        sums.batch_losses[i] = loss.detach() * (here / n_batch)
        sums.add(loss.detach(), here)
        loss = loss * weight
        if self.penalty is not None:
            p = self.penalty()
            sums.penalty += p.detach() * n_batch
            loss = loss + p
        if accumulate > 1:  # weigh by examples, so a step's gradient is the mean over all its batches
            first = (i - i % accumulate) * self.size
            loss = loss * (n_batch / (min(self.n_train, first + accumulate * self.size) - first))
        self.precision.backward(loss)  # fp16: the loss scaled first

    def _optimizer_step(self, sums: Sums) -> None:
        reg = self.cfg.regularization
        self.precision.unscale(self.optimizer)  # fp16: clipping and decay read the real gradients
        if self.clipping:
            sums.grad_norm = max(sums.grad_norm, clip_gradients(self.model, reg) or 0.0)
        if self.decayed is not None:
            decay_weights(self.decayed, self.optimizer, reg.decoupled_weight_decay)
        if not self.precision.step(self.optimizer):
            sums.skipped += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.after_step()
        if self.schedule.unit == "batch":  # the lr of the next step
            sums.stepped(self.optimizer.param_groups[-1]["lr"])

    def _record(self, epoch: int, sums: Sums, train_loss: float, seconds: float) -> EpochRecord:
        """The epoch's record, with the validation split's metrics where the loss is finite."""
        train: TrainMetrics = {"loss": train_loss}
        if self.penalty is not None:
            train["penalty"] = sums.penalty.item() / self.n_train
        if self.cfg.regularization.clip_norm is not None:
            train["grad_norm"] = sums.grad_norm  # the largest before clipping
        if self.precision.scaler is not None:
            train["skipped_steps"] = sums.skipped  # fp16 overflows: the GradScaler skipped these steps
        record: EpochRecord = {"epoch": epoch, "train": train}
        eval_start = time.perf_counter()
        if self.splits.val is not None and math.isfinite(train_loss):
            record["val"] = evaluate_split(self.model, self.splits.val, self.splits, self.run.loss_fn, self.cfg,
                                           self.run.device, None, self.run.metrics, self.run.own, self.precision)
        record["lr"], record["batch_size"], record["seconds"] = sums.lr, self.size, seconds
        record["eval_seconds"] = time.perf_counter() - eval_start
        record["samples_per_second"] = self.n_train / seconds
        if self.schedule.unit == "batch":
            record["lr_range"] = [sums.lr_low, sums.lr_high]
        return record

    def settle(self, epoch: int, record: EpochRecord, answer: Any) -> Status | None:
        """The epoch's end after the answer: the schedule steps; the run ends if it was asked to stop or early
        stopping says so (its status then), or goes on (None)."""
        val_loss = record.get("val", {}).get("loss")
        self.schedule.after_epoch(val_loss)
        if answer == "stop":
            return "stopped"
        # early stopping needs a validation split (checks): a record that reaches here has its loss
        if self.stopper is not None and self.stopper.update(epoch, record["val"]["loss"], self.model):
            return "completed"
        return None

    def checkpoint_due(self, epoch: int) -> bool:
        every = self.cfg.train.checkpoint_every
        return bool(every) and epoch % every == 0 and epoch < self.cfg.train.epochs

    def state(self) -> dict[str, Any]:
        """What a checkpoint saves besides the loop's counters."""
        device = self.run.device
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "stopper": self.stopper.state_dict() if self.stopper is not None else None,
                "scaler": self.precision.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "order": self.order.get_state(),
                        "draws": self.draws.get_state(),
                        **({"cuda": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {})}}

    def save(self, epoch: int, progress: Progress, asking: bool) -> None:
        if self.run_dir is None:
            raise ConfigError("train: a checkpoint (train.checkpoint_every, or a pause) needs a run folder (out_dir)")
        save_checkpoint(self.run_dir, Checkpoint(epoch, progress.saved(asking), self.state()))

    def resumed(self, start: Checkpoint) -> tuple[Progress, Status, int]:
        """Every generator, counter and weight as it was after epoch start.epoch: the counters, the status and the
        epoch to go on from. A run paused for its answer (a search's rung) asks again, then ends the epoch."""
        for epoch in range(1, start.epoch + 1):
            self.freezer.at_epoch(epoch)
        self._restore(start.state)
        progress = Progress.loaded(start.loop)
        if not start.loop["asking"]:
            return progress, "completed", start.epoch + 1
        answer = self.strategy.answer(start.epoch, progress.history[-1])
        if answer == "pause":
            raise Paused(start.epoch)
        with warnings.catch_warnings():  # torch's check cannot know that the saving process stepped the optimizer
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            ended = self.settle(start.epoch, progress.history[-1], answer)
        return (progress, ended, self.cfg.train.epochs + 1) if ended is not None else (progress, "completed",
                                                                                       start.epoch + 1)

    def _restore(self, state: dict[str, Any]) -> None:
        """Load a checkpoint's state (see state()) into the loop's parts."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if self.stopper is not None:
            self.stopper.load_state_dict(state["stopper"])
        self.precision.load_state_dict(state.get("scaler"))
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        self.order.set_state(rng["order"])
        self.draws.set_state(rng["draws"])
        if "cuda" in rng and self.run.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.run.device)

    def result(self, status: Status, progress: Progress, divergence: Divergence | None) -> RunResult:
        """The run's end: early stopping's best weights where asked, the threshold chosen on the validation split,
        and the test split's metrics (none after a divergence)."""
        cfg, splits, run = self.cfg, self.splits, self.run
        best_epoch = None
        if self.stopper is not None and status != "diverged":
            best_epoch = self.stopper.best_epoch
            if cfg.regularization.restore_best:
                self.stopper.restore(self.model)
        threshold, test = None, {}
        if status != "diverged":
            if cfg.loss.threshold != "argmax" and splits.val is not None:
                out, y = outputs(self.model, splits.val, splits, cfg, run.device, run.own, self.precision)
                threshold = choose_threshold(cfg.loss.threshold, y.cpu().numpy(), positive_probability(out))
            test = evaluate_split(self.model, splits.test, splits, run.loss_fn, cfg, run.device, threshold,
                                  run.metrics, run.own, self.precision)
        seconds = progress.train_seconds
        return RunResult(
            status=status, epochs=progress.history, test=test, train_seconds=seconds,
            samples_per_second=self.n_train * len(progress.history) / seconds if seconds > 0 else 0.0,
            parameters=count_parameters(self.model), config=cfg, best_epoch=best_epoch, threshold=threshold,
            model=self.model, divergence=divergence, compile_seconds=self.compile_seconds,
        )
