"""Training on several processes and machines with torch.distributed: DistributedDataParallel replicas that share
each global batch, pipeline stages (torch.distributed.pipelining), and their launch through torchrun."""

from __future__ import annotations

from dltune.parallel.launch import DistributedError, Nodes, launch
from dltune.parallel.pipeline import Pipeline, split_stages
from dltune.parallel.ranks import Ranks, Share, backend_for

__all__ = ["DistributedError", "Nodes", "Pipeline", "Ranks", "Share", "backend_for", "launch", "split_stages"]
