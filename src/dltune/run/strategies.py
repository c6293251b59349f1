"""Where a run's batches are stepped, as small objects the loop (run.loop) calls: here in one process (`Here`), in
DDP's data-parallel ranks (`DataParallel`), or in the stages of a pipeline (`Pipelined`). Each says which module
the training steps call, how one batch's forward and backward go, how the epoch's sums are totalled, and who
answers after an epoch (on_epoch here; rank 0's launcher in a distributed run)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from dltune.data import batch_length

if TYPE_CHECKING:
    from dltune.epochs import EpochRecord
    from dltune.parallel import Pipeline, Ranks
    from dltune.run.counters import Sums

__all__ = ["Backward", "DataParallel", "Here", "Pipelined", "Strategy"]

OnEpoch = Callable[[int, "EpochRecord"], Any]  # may return "stop", or "pause" (see run.loop.fit)


class Backward(Protocol):
    """The loop's forward and backward of batch `i` (or this rank's share of it, `weight` its part of the loss) of
    `n_batch` examples, on one of `world` processes."""

    def __call__(self, i: int, batch: Any, weight: float, n_batch: int, world: int) -> None:
        ...


class Here:
    """One process: the whole batch is stepped here, and on_epoch answers."""

    def __init__(self, on_epoch: OnEpoch | None) -> None:
        self.on_epoch = on_epoch

    def stepped(self, model: nn.Module, stepped: nn.Module) -> nn.Module:
        """The module the training steps call, made again after parameters were unfrozen (`stepped`: the model, or
        its torch.compile'd twin)."""
        return stepped

    def shard(self) -> tuple[int, int] | None:
        """(rank, world) where each process reads its own share of the user's DataLoaders; None here."""
        return None

    def step(self, i: int, batch: Any, backward: Backward, sums: Sums) -> None:
        backward(i, batch, 1.0, batch_length(batch), 1)

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

    def __init__(self, ranks: Ranks, sharded: bool = False) -> None:
        super().__init__(None)
        self.ranks, self.sharded = ranks, sharded  # sharded: the user's DataLoaders, read through a DistributedSampler

    def stepped(self, model: nn.Module, stepped: nn.Module) -> nn.Module:
        return self.ranks.wrap(model)  # DDP syncs the parameters that required gradients when it was made

    def shard(self) -> tuple[int, int] | None:
        return (self.ranks.rank, self.ranks.world) if self.sharded else None

    def step(self, i: int, batch: Any, backward: Backward, sums: Sums) -> None:
        world = self.ranks.world
        if self.sharded:  # this rank's share already, as large as every other rank's (batch.size divides by world)
            backward(i, batch, 1.0, batch_length(batch) * world, world)
            return
        xb, yb = batch
        share = self.ranks.share(xb, yb)
        backward(i, (share.x, share.y), share.weight, len(yb), world)

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

    def step(self, i: int, batch: Any, backward: Backward, sums: Sums) -> None:
        xb, yb = batch  # (x, y) batches: a step of the user's own is refused with a pipeline (checks)
        loss = self.pipe.step(xb, yb)
        sums.batch_losses[i] = loss * self.pipe.last
        sums.loss += loss * (len(yb) * self.pipe.last)

    def gather(self, model: nn.Module) -> None:
        self.pipe.gather(model)


Strategy = Here  # the type the loop takes: Here, or one of its subclasses
