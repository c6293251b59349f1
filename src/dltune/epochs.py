"""The epoch record: what the loop (run.loop) writes after each epoch, and what on_epoch, the trackers, the reports,
the pruner and metrics.json's "epochs" read. A TypedDict: at run time a plain dict, so that it goes to JSON, to
another process and to a checkpoint as it is, with its keys in the order written here."""

from __future__ import annotations

from typing import Required, TypedDict

__all__ = ["EpochRecord", "TrainMetrics"]


class TrainMetrics(TypedDict, total=False):
    loss: Required[float]  # the mean training loss of the epoch's batches, as they were trained
    penalty: float  # the mean L1/L2 penalty, with regularization's penalty on
    grad_norm: float  # with regularization.clip_norm: the largest gradient norm before clipping
    skipped_steps: int  # train.precision fp16: the steps the GradScaler skipped (gradients that overflowed)


class EpochRecord(TypedDict, total=False):
    epoch: Required[int]  # 1-based
    train: Required[TrainMetrics]
    val: dict[str, float]  # the validation split's loss and metrics; none without one, or where the loss diverged
    lr: float  # the last layer group's at the epoch's start
    batch_size: int
    seconds: float  # training, evaluation apart
    eval_seconds: float
    samples_per_second: float
    lr_range: list[float]  # a per-step schedule's lowest and highest lr in the epoch
