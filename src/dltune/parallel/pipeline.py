"""Model parallelism: the model cut into consecutive stages, one process each, trained through torch's
pipelining schedules (GPipe, 1F1B) with micro-batches."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from dltune.errors import ConfigError
from dltune.parallel.ranks import Ranks

__all__ = ["Pipeline", "split_stages"]


def split_stages(model: nn.Module, stages: int) -> list[nn.Sequential]:
    """`model` cut into `stages` consecutive parts with about equal parameter counts, each holding at least one
    layer with parameters. The parts hold the model's own modules (not copies). The model must be an nn.Sequential;
    a Sequential inside it at the top (a CNN's feature extractor) is opened into its layers."""
    if not isinstance(model, nn.Sequential):
        raise ConfigError(f"parallel.stages: the pipeline cuts an nn.Sequential into stages; this model is a "
                          f"{type(model).__name__} (built-in mlp and cnn are Sequential)")
    layers = [m for child in model for m in (child if isinstance(child, nn.Sequential) else [child])]
    sizes = [sum(p.numel() for p in layer.parameters()) for layer in layers]
    weighted = sum(1 for s in sizes if s)
    if stages > weighted:
        raise ConfigError(f"parallel.stages: {stages} stages, but the model has {weighted} layers with parameters "
                          f"to share among them; use at most {weighted}")
    parts: list[list[nn.Module]] = [[]]
    total, done, left = sum(sizes), 0, weighted  # left: layers with parameters not yet placed
    for layer, size in zip(layers, sizes, strict=True):
        cut = len(parts) < stages and parts[-1] and any(sum(p.numel() for p in m.parameters()) for m in parts[-1])
        if cut and size and (done >= total * len(parts) / stages or left <= stages - len(parts)):
            parts.append([])
        parts[-1].append(layer)
        done, left = done + size, left - (1 if size else 0)
    return [nn.Sequential(*p) for p in parts]


class Pipeline:
    """This rank's stage of the model and its schedules (one per batch size: a stage's tensor shapes are fixed)."""

    def __init__(self, model: nn.Module, ranks: Ranks, microbatches: int, schedule: str,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], device: torch.device) -> None:
        self.ranks, self.microbatches, self.schedule, self.loss_fn, self.device = (ranks, microbatches, schedule,
                                                                                   loss_fn, device)
        self.stage = split_stages(model, ranks.world)[ranks.rank]
        owned = {id(t) for t in [*self.stage.parameters(), *self.stage.buffers()]}
        self.names = [k for k, v in model.state_dict(keep_vars=True).items() if id(v) in owned]
        self.first, self.last = ranks.rank == 0, ranks.rank == ranks.world - 1
        self._schedules: dict[int, object] = {}

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward and backward of one batch through all stages: the gradients of this stage's parameters are
        those of the batch's mean loss. Returns the mean loss on the last stage, 0 on the others."""
        schedule = self._for(len(y))
        if self.first:
            schedule.step(x)  # type: ignore[attr-defined]
            return torch.zeros((), device=self.device)
        if not self.last:
            schedule.step()  # type: ignore[attr-defined]
            return torch.zeros((), device=self.device)
        losses: list[torch.Tensor] = []
        schedule.step(target=y, losses=losses)  # type: ignore[attr-defined]
        return torch.stack([loss.detach() for loss in losses]).mean()

    def _for(self, n: int) -> object:
        """The schedule for batches of `n` examples: micro-batches of equal size, as many as parallel.microbatches
        or the largest count below it that divides n (a stage's shapes are fixed, and equal sizes keep the mean)."""
        if n not in self._schedules:
            from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

            chunks = max(k for k in range(1, min(self.microbatches, n) + 1) if n % k == 0)
            kind = Schedule1F1B if self.schedule == "1f1b" and chunks >= self.ranks.world else ScheduleGPipe
            stage = PipelineStage(self.stage, self.ranks.rank, self.ranks.world, self.device)
            self._schedules[n] = kind(stage, n_microbatches=chunks, loss_fn=self.loss_fn)
        return self._schedules[n]

    def gather(self, model: nn.Module) -> None:
        """Every stage's current weights into `model` on every rank, so that each holds the whole trained model
        (to evaluate it, and to save it)."""
        state = model.state_dict()
        mine = {k: state[k].detach().cpu() for k in self.names}
        everyone: list[dict[str, torch.Tensor]] = [{} for _ in range(self.ranks.world)]
        dist.all_gather_object(everyone, mine)
        with torch.no_grad():
            for part in everyone:
                for k, v in part.items():
                    state[k].copy_(v)
