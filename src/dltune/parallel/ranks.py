"""One process of a distributed run, as the training loop sees it: its rank, its share of each global batch, the sums
over all ranks, and the per-epoch exchange with the process that launched the run."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:
    from dltune.epochs import EpochRecord

__all__ = ["ENV_DIR", "ENV_PARENT", "Ranks", "Share", "backend_for"]

ENV_DIR = "DLTUNE_RANKS_DIR"  # the launcher's exchange folder on this machine: epochs.jsonl, answer-N, result files
ENV_PARENT = "DLTUNE_PARENT_PID"  # the launcher's process: rank 0 stops waiting for answers when it is gone
ANSWER_POLL_SECONDS = 0.005


def backend_for(choice: str, device: str) -> str:
    """The torch.distributed backend of parallel.backend `choice` for train.device `device`: auto is NCCL where the
    ranks train on CUDA, else gloo."""
    if choice != "auto":
        return choice
    return "nccl" if device != "cpu" and torch.cuda.is_available() else "gloo"


@dataclass(frozen=True)
class Share:
    """A rank's part of one global batch: its examples, and the weight that makes the mean of the ranks' weighted
    mean losses the mean loss of the whole batch (DDP averages gradients over ranks)."""

    x: torch.Tensor
    y: torch.Tensor
    weight: float  # local examples · world / global examples; 0 for a rank whose part is empty
    size: int  # the global batch's examples


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group that torchrun started (RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int
    world: int
    local_rank: int
    folder: Path  # ENV_DIR

    @classmethod
    def from_env(cls) -> Ranks:
        return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]),
                   Path(os.environ[ENV_DIR]))

    @property
    def writes(self) -> bool:
        """This rank writes what its machine's launcher reads (the first rank of each machine)."""
        return self.local_rank == 0

    def share(self, x: torch.Tensor, y: torch.Tensor) -> Share:
        """This rank's consecutive slice of a global batch (slices differ by at most one example). A rank whose
        slice is empty (a last batch smaller than the world) trains on one example with weight 0, so that every
        rank takes part in each gradient all-reduce."""
        n = len(y)
        start, stop = self.rank * n // self.world, (self.rank + 1) * n // self.world
        if stop == start:
            return Share(x[:1], y[:1], 0.0, n)
        return Share(x[start:stop], y[start:stop], (stop - start) * self.world / n, n)

    def total(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of `t` over all ranks (a new tensor; `t` is left as it is)."""
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model under DistributedDataParallel: gradients averaged over ranks in backward. Parameters frozen now
        (requires_grad False) are left out, so a model that unfreezes parameters is wrapped again."""
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.local_rank] if next(model.parameters()).is_cuda else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def exchange(self, epoch: int, record: EpochRecord) -> tuple[EpochRecord, str | None]:
        """After each epoch: rank 0's record goes to every rank (so that all decide alike) and to each machine's
        launcher, which shows it, logs it and answers "stop" or not (a search's pruner). Returns rank 0's record
        and the answer of rank 0's launcher, the same on every rank."""
        shared: list[Any] = [record]
        dist.broadcast_object_list(shared, src=0)
        record = shared[0]
        if self.writes:
            with open(self.folder / "epochs.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        answer: list[Any] = [self._answer(epoch) if self.rank == 0 else None]
        dist.broadcast_object_list(answer, src=0)
        return record, answer[0]

    def _answer(self, epoch: int) -> str | None:
        """Wait for the launcher's answer to `epoch`'s record (a file answer-EPOCH, written whole)."""
        path, parent = self.folder / f"answer-{epoch}", int(os.environ.get(ENV_PARENT, "0"))
        while not path.exists():
            if parent and not _alive(parent):
                raise RuntimeError(f"the launching process ({parent}) is gone; stopping")
            time.sleep(ANSWER_POLL_SECONDS)
        return path.read_text().strip() or None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
