"""The training loop: fit(config, on_epoch=None) -> RunResult, on an experiment that `run.checks.check` passed.
The public entry is `dltune.train` (tuner.auto), which checks the experiment, finds the settings of train.auto,
then calls fit."""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dltune.run.assembly import (Data, LossFn, Model, Setup, Splits, TrainLossFn, batcher, compiled_for_training,
                             optimizing, setup)
from dltune.run.checkpoints import Checkpoint, Paused, has_checkpoint, load_checkpoint, save_checkpoint
from dltune.run.checks import check_world
from dltune.experiment.config import ExperimentConfig, to_toml
from dltune.run.environment import environment
from dltune.run.evaluation import evaluate_split, length, outputs
from dltune.errors import ConfigError
from dltune.run.metrics import ExtraMetric, choose_threshold, positive_probability
from dltune.models import count_parameters
from dltune.parallel import Nodes, Pipeline, Ranks, backend_for, launch, split_stages
from dltune.run.results import Divergence, RunResult, Status, run_claimed, write_run
from dltune.run.runtime import cores, torch_settings, warn_if_crowded
from dltune.techniques.augment import build_augment
from dltune.techniques.batching import batch_sizes, lr_scales, optimizer_steps
from dltune.techniques.losses import resolve_loss_name
from dltune.techniques.regularization import (EarlyStopping, build_penalty, clip_gradients, decay_weights,
                                              penalized_weights)
from dltune.techniques.schedules import Schedule
from dltune.tracking import Run, Tracker, open_trackers

__all__ = ["OnEpoch", "RunResult", "fit", "fit_ranked"]

OnEpoch = Callable[[int, dict[str, Any]], Any]  # may return "stop", or "pause" (see train)


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
        trackers = open_trackers(config, _named(config, track, run_dir))
        try:
            if config.parallel.strategy != "none":
                result = _launched(config, _tracked(on_epoch, trackers), nodes or Nodes())
            else:
                result = _train_here(config, _tracked(on_epoch, trackers), data, model, run_dir, resume)
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
        result = _fit(config, run.splits, run.model, run.loss_fn, run.device, on_epoch, run.metrics, run.train_loss,
                      run_dir=run_dir, start=start)
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
        net = setup(config).model  # bad data or a model that cannot be split fail here, before any process starts
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
        result = _fit(config, run.splits, run.model, run.loss_fn, run.device, None, run.metrics, run.train_loss,
                      ranks)
        return _described(result, run, config, processes=ranks.world, strategy=config.parallel.strategy)


def _named(config: ExperimentConfig, track: Run | None, run_dir: Path | None) -> Run:
    """How trackers name this run: as `track` says, else by its run folder; tracking.experiment wins."""
    if track is None:
        track = Run("dltune", run_dir.name if run_dir is not None else "run",
                    folder=run_dir.parent if run_dir is not None else None)
    return replace(track, experiment=config.tracking.experiment or track.experiment)


def _tracked(on_epoch: OnEpoch | None, trackers: list[Tracker]) -> OnEpoch | None:
    """on_epoch, after the trackers have logged the epoch."""
    if not trackers:
        return on_epoch

    def tracked(epoch: int, record: dict[str, Any]) -> Any:
        for tracker in trackers:
            tracker.epoch(epoch, record)
        return on_epoch(epoch, record) if on_epoch is not None else None

    return tracked


def _fit(cfg: ExperimentConfig, splits: Splits, model: nn.Module, loss_fn: LossFn, device: torch.device,
         on_epoch: OnEpoch | None, metrics: Sequence[ExtraMetric] = (), step_loss: TrainLossFn | None = None,
         ranks: Ranks | None = None, run_dir: Path | None = None, start: Checkpoint | None = None) -> RunResult:
    """The loop. With `ranks` (one process of a distributed run), every rank draws the same global batches. Under
    DDP each trains on its share of each batch, and DistributedDataParallel averages the gradients; in a pipeline
    each trains its stage on the whole batch, in micro-batches. Losses are summed over ranks, and rank 0's epoch
    record decides for all (a stop, early stopping): the run is the one-process run up to float rounding.
    Checkpoints (train.checkpoint_every, an answer "pause") go to `run_dir`; `start`: the checkpoint to go on from."""
    epochs, reg, accumulate = cfg.train.epochs, cfg.regularization, cfg.batch.accumulate
    n_train = length(splits.train)
    sizes, scales = batch_sizes(cfg.batch, epochs), lr_scales(cfg.batch, epochs)
    optimizer, schedule, freezer = optimizing(cfg, model, [optimizer_steps(n_train, s, accumulate) for s in sizes])
    penalty = build_penalty(reg, model)
    decayed = penalized_weights(model, reg.penalize_all) if reg.decoupled_weight_decay > 0 else None
    clipping = reg.clip_norm is not None or reg.clip_value is not None
    order, draws = torch.Generator().manual_seed(cfg.train.seed), torch.Generator().manual_seed(cfg.train.seed)
    augment = build_augment(reg, splits.input_shape, draws)
    stopper = EarlyStopping(reg.early_stopping, reg.min_delta) if reg.early_stopping else None
    batches = batcher(splits, cfg, device, order)
    stepped, compile_seconds = (compiled_for_training(model, splits, loss_fn, device, sizes, n_train)
                                if cfg.train.compile else (model, 0.0))  # the module the training steps call
    pipe = (Pipeline(model, ranks, cfg.parallel.microbatches, cfg.parallel.schedule, loss_fn, device)
            if ranks is not None and cfg.parallel.strategy == "pipeline" else None)
    if ranks is not None and pipe is None:
        stepped = ranks.wrap(model)

    def state() -> dict[str, Any]:  # what a checkpoint saves besides the loop's counters
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "stopper": stopper.state_dict() if stopper is not None else None,
                "rng": {"torch": torch.get_rng_state(), "order": order.get_state(), "draws": draws.get_state(),
                        **({"cuda": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {})}}

    def settle(epoch: int, record: dict[str, Any], answer: Any) -> Status | None:
        """The epoch's end after on_epoch's answer: the schedule steps; the run ends if it was asked to stop or
        early stopping says so (its status then), or goes on (None)."""
        val_loss = record.get("val", {}).get("loss")
        schedule.after_epoch(val_loss)
        if answer == "stop":
            return "stopped"
        if stopper is not None and stopper.update(epoch, val_loss, model):
            return "completed"
        return None

    def save(epoch: int, asking: bool) -> None:  # asking: saved before on_epoch's answer took effect
        if run_dir is None:
            raise ConfigError("train: a checkpoint (train.checkpoint_every, or a pause) needs a run folder (out_dir)")
        loop = {"history": history, "train_seconds": train_seconds, "steps_before": steps_before,
                "last_loss": last_loss, "asking": asking}
        save_checkpoint(run_dir, Checkpoint(epoch, loop, state()))

    status: Status = "completed"
    history: list[dict[str, Any]] = []
    train_seconds = 0.0
    divergence: Divergence | None = None
    steps_before = 0  # batches of the epochs before this one
    last_loss: float | None = None  # the last batch's loss of the epoch before
    first = 1
    if start is not None:  # every generator, counter and weight as it was after epoch start.epoch
        for epoch in range(1, start.epoch + 1):
            freezer.at_epoch(epoch)
        _restore(start.state, model, optimizer, schedule, stopper, order, draws, device)
        history, train_seconds = start.loop["history"], start.loop["train_seconds"]
        steps_before, last_loss = start.loop["steps_before"], start.loop["last_loss"]
        first = start.epoch + 1
        if start.loop["asking"]:  # paused for its answer (a search's rung): asks again, then ends the epoch
            answer = on_epoch(start.epoch, history[-1]) if on_epoch is not None else None
            if answer == "pause":
                raise Paused(start.epoch)
            with warnings.catch_warnings():  # torch's check cannot know that the saving process stepped the optimizer
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                ended = settle(start.epoch, history[-1], answer)
            if ended is not None:
                status, first = ended, epochs + 1
    for epoch in range(first, epochs + 1):
        size = sizes[epoch - 1]
        if freezer.at_epoch(epoch) and ranks is not None and pipe is None:
            stepped = ranks.wrap(model)  # DDP syncs the parameters that required gradients when it was made
        schedule.set_scale(scales[epoch - 1])
        n_batches = math.ceil(n_train / size)
        lr = optimizer.param_groups[-1]["lr"]  # the head's, where layer groups have rates of their own
        lr_low = lr_high = lr
        step_lrs = [lr]  # per-step schedules: the lr of each batch, to say where a run diverged
        grad_norm = 0.0
        model.train()
        total_loss = torch.zeros((), device=device)
        total_penalty = torch.zeros((), device=device)
        batch_losses = torch.zeros(n_batches, device=device)  # read only if the epoch's loss is not finite
        start = time.perf_counter()
        for i, (xb, yb) in enumerate(batches(size)):
            if augment is not None:
                xb = augment(xb)  # the whole global batch on every rank: the same draws as one process
            n_batch, weight = len(yb), 1.0
            if pipe is not None:  # forward and backward through the stages; the loss is known on the last
                loss = pipe.step(xb, yb)
                batch_losses[i] = loss * pipe.last
                total_loss += loss * (n_batch * pipe.last)
            else:
                if ranks is not None:
                    share = ranks.share(xb, yb)
                    xb, yb, weight = share.x, share.y, share.weight
                loss = loss_fn(stepped(xb), yb) if step_loss is None else step_loss(stepped(xb), xb, yb)
                here = weight * n_batch / (ranks.world if ranks is not None else 1)  # this process's examples
                batch_losses[i] = loss.detach() * (here / n_batch)
                total_loss += loss.detach() * here
                loss = loss * weight
                if penalty is not None:
                    p = penalty()
                    total_penalty += p.detach() * n_batch
                    loss = loss + p
                if accumulate > 1:  # weigh by examples, so a step's gradient is the mean over all its batches
                    first = (i - i % accumulate) * size
                    loss = loss * (n_batch / (min(n_train, first + accumulate * size) - first))
                loss.backward()
            if accumulate > 1 and (i + 1) % accumulate and i + 1 < n_batches:
                continue  # gradients add up until the step
            if clipping:
                grad_norm = max(grad_norm, clip_gradients(model, reg) or 0.0)
            if decayed is not None:
                decay_weights(decayed, optimizer, reg.decoupled_weight_decay)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.after_step()
            if schedule.unit == "batch":  # the lr of the next step
                now = optimizer.param_groups[-1]["lr"]
                lr_low, lr_high = min(lr_low, now), max(lr_high, now)
                step_lrs.append(now)
        # the last batch is a view of the epoch's shuffled copy of the training set (assembly.batcher): let it go
        # before on_epoch, where a search's trial may wait at a rung, or each waiting trial keeps a copy of the data
        xb = yb = loss = None
        if ranks is not None:
            total_loss, batch_losses = ranks.total(total_loss), ranks.total(batch_losses)
        train_loss = total_loss.item() / n_train  # .item() also waits for an asynchronous device
        seconds = time.perf_counter() - start
        if pipe is not None:
            pipe.gather(model)  # every stage's weights on every rank: each evaluates the whole model
        train_seconds += seconds

        record: dict[str, Any] = {"epoch": epoch, "train": {"loss": train_loss}}
        if penalty is not None:
            record["train"]["penalty"] = total_penalty.item() / n_train
        if reg.clip_norm is not None:
            record["train"]["grad_norm"] = grad_norm  # the largest before clipping
        eval_start = time.perf_counter()
        if splits.val is not None and math.isfinite(train_loss):
            record["val"] = evaluate_split(model, splits.val, splits, loss_fn, cfg, device, None, metrics)
        record.update(lr=lr, batch_size=size, seconds=seconds, eval_seconds=time.perf_counter() - eval_start,
                      samples_per_second=n_train / seconds)
        if schedule.unit == "batch":
            record["lr_range"] = [lr_low, lr_high]
        history.append(record)
        if not math.isfinite(train_loss):
            status = "diverged"
            divergence = _divergence(epoch, batch_losses, steps_before, last_loss, step_lrs, n_batches)
            break
        steps_before += n_batches
        last_loss = batch_losses[-1].item()
        answer = None
        if ranks is not None:
            shared, answer = ranks.exchange(epoch, record)  # rank 0's record, and its launcher's answer
            if "val" in shared:
                record["val"] = shared["val"]
        elif on_epoch is not None:
            answer = on_epoch(epoch, record)
        if answer == "pause":  # saved before the answer's consequences; a resumed run asks again
            save(epoch, asking=True)
            raise Paused(epoch)
        ended = settle(epoch, record, answer)
        if ended is not None:
            status = ended
            break
        every = cfg.train.checkpoint_every
        if every and epoch % every == 0 and epoch < epochs:
            save(epoch, asking=False)

    best_epoch = None
    if stopper is not None and status != "diverged":
        best_epoch = stopper.best_epoch
        if reg.restore_best:
            stopper.restore(model)
    threshold, test = None, {}
    if status != "diverged":
        if cfg.loss.threshold != "argmax" and splits.val is not None:
            out, y = outputs(model, splits.val, splits, cfg, device)
            threshold = choose_threshold(cfg.loss.threshold, y.cpu().numpy(), positive_probability(out))
        test = evaluate_split(model, splits.test, splits, loss_fn, cfg, device, threshold, metrics)
    return RunResult(
        status=status, epochs=history, test=test, train_seconds=train_seconds,
        samples_per_second=n_train * len(history) / train_seconds if train_seconds > 0 else 0.0,
        parameters=count_parameters(model), config=cfg, best_epoch=best_epoch, threshold=threshold, model=model,
        divergence=divergence, compile_seconds=compile_seconds,
    )


def _restore(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule,
             stopper: EarlyStopping | None, order: torch.Generator, draws: torch.Generator,
             device: torch.device) -> None:
    """Load a checkpoint's state (see _fit's state()) into the loop's parts."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    if stopper is not None:
        stopper.load_state_dict(state["stopper"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    order.set_state(rng["order"])
    draws.set_state(rng["draws"])
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)


def _divergence(epoch: int, batch_losses: torch.Tensor, steps_before: int, last_loss: float | None,
                step_lrs: list[float], n_batches: int) -> Divergence:
    """Where the loss first stopped being finite in this epoch: the batch, the loss before it, the lr."""
    losses = batch_losses.tolist()
    i = next((k for k, v in enumerate(losses) if not math.isfinite(v)), n_batches - 1)
    before = losses[i - 1] if i > 0 else last_loss
    lr = step_lrs[min(i, len(step_lrs) - 1)]  # a per-epoch schedule keeps one lr through the epoch
    return Divergence(epoch=epoch, batch=i + 1, batches=n_batches, step=steps_before + i + 1,
                      loss=losses[i], last_finite_loss=before, lr=lr)
