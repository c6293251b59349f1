"""The loop's counters (run.loop): over the run, what a checkpoint saves besides the parts' state (`Progress`); over
one epoch, the running sums of its steps (`Sums`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from dltune.epochs import EpochRecord
from dltune.run.results import Divergence

__all__ = ["Progress", "Sums"]


@dataclass
class Progress:
    """The loop's counters: what a checkpoint saves besides the parts' state (Checkpoint.loop)."""

    history: list[EpochRecord] = field(default_factory=list)
    train_seconds: float = 0.0
    steps_before: int = 0  # batches of the epochs before this one
    last_loss: float | None = None  # the last batch's loss of the epoch before

    def saved(self, asking: bool) -> dict[str, Any]:  # asking: saved before on_epoch's answer took effect
        return {"history": self.history, "train_seconds": self.train_seconds, "steps_before": self.steps_before,
                "last_loss": self.last_loss, "asking": asking}

    @classmethod
    def loaded(cls, loop: dict[str, Any]) -> Progress:
        return cls(loop["history"], loop["train_seconds"], loop["steps_before"], loop["last_loss"])


class Sums:
    """One epoch's running sums, on the device: the loss (and penalty) weighted by examples, each batch's loss (read
    only if the epoch's loss is not finite), the largest gradient norm, and the lr of each step."""

    def __init__(self, lr: float, n_batches: int, device: torch.device, scaled: bool = False) -> None:
        self.lr, self.n_batches = lr, n_batches  # lr: the head's at the epoch's start
        self.scaled = scaled  # fp16's GradScaler: an overflow's loss is left out of the mean (add)
        self.lr_low = self.lr_high = lr
        self.step_lrs = [lr]  # per-step schedules: the lr of each batch, to say where a run diverged
        self.grad_norm = 0.0
        self.skipped = 0  # fp16: steps the GradScaler skipped (gradients that overflowed)
        self.examples = torch.zeros((), device=device)  # fp16: the examples of the batches whose loss was finite
        self.loss = torch.zeros((), device=device)
        self.penalty = torch.zeros((), device=device)
        self.batch_losses = torch.zeros(n_batches, device=device)

    def add(self, loss: torch.Tensor, examples: float) -> None:
        """A batch's mean loss over `examples` examples. Losses scaled by fp16's GradScaler: a loss that overflowed
        to inf or NaN is left out, its step skipped by the scaler and counted apart; it is not a divergence."""
        if not self.scaled:
            self.loss += loss * examples
            return
        finite = torch.isfinite(loss)
        self.loss += torch.where(finite, loss * examples, 0.0)
        self.examples += finite * examples

    def mean_loss(self, total: Callable[[torch.Tensor], torch.Tensor], n_train: int) -> float:
        """The epoch's mean training loss, summed over processes by `total`: over the `n_train` examples, or where
        losses were scaled over the batches whose loss was finite (NaN where none was: the run diverged). The
        sums become their totals."""
        self.loss, self.batch_losses = total(self.loss), total(self.batch_losses)
        if not self.scaled:
            return self.loss.item() / n_train  # .item() also waits for an asynchronous device
        examples = total(self.examples).item()
        return self.loss.item() / examples if examples else math.nan

    def stepped(self, lr: float) -> None:
        """A per-step schedule set the lr of the next step."""
        self.lr_low, self.lr_high = min(self.lr_low, lr), max(self.lr_high, lr)
        self.step_lrs.append(lr)

    def divergence(self, epoch: int, progress: Progress) -> Divergence:
        """Where the loss first stopped being finite in this epoch: the batch, the loss before it, the lr."""
        losses = self.batch_losses.tolist()
        i = next((k for k, v in enumerate(losses) if not math.isfinite(v)), self.n_batches - 1)
        before = losses[i - 1] if i > 0 else progress.last_loss
        lr = self.step_lrs[min(i, len(self.step_lrs) - 1)]  # a per-epoch schedule keeps one lr through the epoch
        return Divergence(epoch=epoch, batch=i + 1, batches=self.n_batches, step=progress.steps_before + i + 1,
                          loss=losses[i], last_finite_loss=before, lr=lr)
