"""Model soups (Wortsman et al., 2022, "Model soups: averaging weights of multiple fine-tuned models"): one model
whose weights are the mean of the members' weights. The uniform soup averages every member; the greedy soup takes
the members in order of validation accuracy and keeps each one whose addition does not lower it.

Averaging weights only makes sense for members of one architecture that started from the same weights (the seeds
of one fine-tune, or trials that share train.seed and so their initial weights); anything else is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from dltune.errors import ConfigError
from dltune.run.saved import SavedRun

__all__ = ["average", "check_soup", "greedy_soup"]


def check_soup(runs: Sequence[SavedRun], names: Sequence[str]) -> None:
    """Refuse members of different architectures (weights by other names or shapes) or different initial weights."""
    first, first_name = runs[0], names[0]
    for run, name in zip(runs[1:], names[1:], strict=True):
        keys, theirs = set(first.state), set(run.state)
        if keys != theirs:
            odd = sorted(keys ^ theirs)[0]
            raise ConfigError(f"--method soup: {first_name} and {name} are different architectures ({odd!r} is in "
                              "one and not the other); a soup averages the weights of one architecture")
        for key in sorted(keys):
            if first.state[key].shape != run.state[key].shape:
                raise ConfigError(f"--method soup: {first_name} and {name} are different architectures ({key!r} "
                                  f"has shape {tuple(first.state[key].shape)} against {tuple(run.state[key].shape)})"
                                  "; a soup averages the weights of one architecture")
    starts = {_start(run) for run in runs}
    if len(starts) > 1:
        raise ConfigError("--method soup: the members did not start from the same weights ("
                          + ", ".join(f"{n}: {_start(r)}" for n, r in zip(names, runs, strict=True))
                          + "); a soup averages models that share an initialisation, such as the seeds of one "
                          "fine-tune (transfer.from) or trials that share train.seed")


def _start(run: SavedRun) -> str:
    """Where a member's weights started: the run it was fine-tuned from, else its seed's random draw."""
    transfer = getattr(run.config, "transfer", None)
    origin = getattr(transfer, "from_", None) if transfer is not None else None
    return f"fine-tuned from {origin}" if origin else f"train.seed {run.config.train.seed}"


def average(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating-point tensors; other tensors (BatchNorm's batch count) from the first."""
    out = {}
    for key, value in states[0].items():
        if value.is_floating_point():
            out[key] = torch.stack([s[key].double() for s in states]).mean(dim=0).to(value.dtype)
        else:
            out[key] = value.clone()
    return out


def greedy_soup(states: Sequence[dict[str, torch.Tensor]], order: Sequence[int],
                score: Callable[[dict[str, torch.Tensor]], float]) -> list[int]:
    """The members (indices) of the greedy soup: in `order` (best validation score first), each one kept when the
    soup with it scores at least as well on validation (`score`, higher is better) as the soup without it."""
    chosen = [order[0]]
    best = score(states[order[0]])
    for i in order[1:]:
        value = score(average([states[j] for j in [*chosen, i]]))
        if value >= best:
            chosen.append(i)
            best = value
    return chosen
