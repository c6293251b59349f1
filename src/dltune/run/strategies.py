"""Where a run's batches are stepped, as small objects the loop (run.loop) calls: here in one process (`Here`), in
DDP's data-parallel ranks (`DataParallel`), or in the stages of a pipeline (`Pipelined`). Each says which module
the training steps call, how one batch's forward and backward go, how the epoch's sums are totalled, and who
answers after an epoch (on_epoch here; rank 0's launcher in a distributed run)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from dltune.epochs import EpochRecord
    from dltune.parallel import Pipeline, Ranks
    from dltune.run.counters import Sums

__all__ = ["Backward", "DataParallel", "Here", "Pipelined", "Strategy"]

OnEpoch = Callable[[int, "EpochRecord"], Any]  # may return "stop", or "pause" (see run.loop.fit)


class Backward(Protocol):
    """The loop's forward and backward of batch `i` (or this rank's share of it, `weight` its part of the loss) of
    `n_batch` examples, on one of `world` processes."""

    def __call__(self, i: int, xb: torch.Tensor, yb: torch.Tensor, weight: float, n_batch: int, world: int) -> None:
        ...


class Here:
    """One process: the whole batch is stepped here, and on_epoch answers."""

    def __init__(self, on_epoch: OnEpoch | None) -> None:
        self.on_epoch = on_epoch

    def stepped(self, model: nn.Module, stepped: nn.Module) -> nn.Module:
        """The module the training steps call, made again after parameters were unfrozen (`stepped`: the model, or
        its torch.compile'd twin)."""
        return stepped

    def step(self, i: int, xb: torch.Tensor, yb: torch.Tensor, backward: Backward, sums: Sums) -> None:
        backward(i, xb, yb, 1.0, len(yb), 1)

    def total(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def gather(self, model: nn.Module) -> None:
        """After an epoch's steps: the whole model's weights here (a pipeline's stages are apart)."""

    def answer(self, epoch: int, record: EpochRecord) -> Any:
        """The answer to the epoch's record ("stop", "pause" or None)."""
        return self.on_epoch(epoch, record) if self.on_epoch is not None else None


class DataParallel(Here):
    """One rank of DDP: each trains on its share of each global batch, DistributedDataParallel averages the gradients,
    losses are summed over ranks, and rank 0's record decides for all."""

    def __init__(self, ranks: Ranks) -> None:
        super().__init__(None)
        self.ranks = ranks

    def stepped(self, model: nn.Module, stepped: nn.Module) -> nn.Module:
        return self.ranks.wrap(model)  # DDP syncs the parameters that required gradients when it was made

    def step(self, i: int, xb: torch.Tensor, yb: torch.Tensor, backward: Backward, sums: Sums) -> None:
        share = self.ranks.share(xb, yb)
        backward(i, share.x, share.y, share.weight, len(yb), self.ranks.world)

    def total(self, t: torch.Tensor) -> torch.Tensor:
        return self.ranks.total(t)

    def answer(self, epoch: int, record: EpochRecord) -> Any:
        shared, answer = self.ranks.exchange(epoch, record)  # rank 0's record, and its launcher's answer
        if "val" in shared:
            record["val"] = shared["val"]
        return answer


class Pipelined(DataParallel):
    """One stage of a pipeline: each rank trains its stage on the whole batch, in micro-batches; the loss is known on
    the last stage, and every stage's weights are gathered on every rank after the epoch."""

    def __init__(self, ranks: Ranks, pipe: Pipeline) -> None:
        super().__init__(ranks)
        self.pipe = pipe

    def stepped(self, model: nn.Module, stepped: nn.Module) -> nn.Module:
        return stepped

    def step(self, i: int, xb: torch.Tensor, yb: torch.Tensor, backward: Backward, sums: Sums) -> None:
        loss = self.pipe.step(xb, yb)
        sums.batch_losses[i] = loss * self.pipe.last
        sums.loss += loss * (len(yb) * self.pipe.last)

    def gather(self, model: nn.Module) -> None:
        self.pipe.gather(model)


Strategy = Here  # the type the loop takes: Here, or one of its subclasses
