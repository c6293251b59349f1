"""A run folder read back: its experiment, its record, and its model with the trained weights.

A run folder holds config.toml and model.safetensors (a search's best/ folder too). The model is built from the
experiment as training built it, then every layer whose saved weights have another shape (a model pruned by
`dltune compress`: fewer hidden units or channels) is replaced by a dense layer of the saved shape, so a pruned
model reloads with torch alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dltune.errors import ConfigError
from dltune.experiment.config import ExperimentConfig, load_config

__all__ = ["SavedRun", "fit_to", "load_state", "read_run"]


@dataclass
class SavedRun:
    """A run folder's experiment, its metrics.json (empty when it has none) and its weights (CPU tensors)."""

    path: Path
    config: ExperimentConfig
    state: dict[str, torch.Tensor]
    metrics: dict[str, Any] = field(default_factory=dict)


def read_run(path: str | Path, key: str = "RUN_DIR") -> SavedRun:
    """The run folder at `path`; a folder without a model or an experiment is an error naming `key` and the file."""
    from safetensors.torch import load_file

    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"{key}: {folder} is not a folder (a run folder holds config.toml and model.safetensors)")
    for name in ("config.toml", "model.safetensors"):
        if not (folder / name).is_file():
            raise ConfigError(f"{key}: {folder} has no {name}: not a run folder with weights (a run folder of "
                              "dltune train, a trial's folder, or a search's best/ folder)")
    try:
        state = load_file(str(folder / "model.safetensors"))
    except Exception as e:  # safetensors raises its own errors on a damaged file
        raise ConfigError(f"{key}: {folder / 'model.safetensors'} cannot be read: {e}") from None
    metrics_file = folder / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return SavedRun(folder, load_config(folder / "config.toml"), state, metrics)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], named: str) -> nn.Module:
    """`model` with `state` loaded, its layers first resized to the saved shapes (`fit_to`)."""
    fit_to(model, state, named)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ConfigError(f"{named}: the saved weights do not fit the model its experiment builds: "
                          f"{str(e).splitlines()[0]}") from None
    return model


def fit_to(model: nn.Module, state: dict[str, torch.Tensor], named: str = "RUN_DIR") -> None:
    """Replace each nn.Linear, convolution and batch norm whose saved weight has another shape by a fresh one of
    that shape (the rest of its settings kept); layers of other kinds must match as they are."""
    for name, module in list(model.named_modules()):
        weight = state.get(f"{name}.weight" if name else "weight")
        if weight is None or not hasattr(module, "weight") or module.weight is None:
            continue
        if tuple(module.weight.shape) == tuple(weight.shape):
            continue
        replacement = _resized(module, weight, state.get(f"{name}.running_mean"))
        if replacement is None:
            raise ConfigError(f"{named}: layer {name!r} ({type(module).__name__}) has weights of shape "
                              f"{tuple(weight.shape)} saved against {tuple(module.weight.shape)} built, and only "
                              "Linear, convolution and batch-norm layers can be resized")
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, replacement)


def _resized(module: nn.Module, weight: torch.Tensor, running_mean: torch.Tensor | None) -> nn.Module | None:
    bias = getattr(module, "bias", None) is not None
    if isinstance(module, nn.Linear):
        return nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed and module.groups == 1:
        # Conv1d, Conv2d, Conv3d (or a subclass): their constructor, not _ConvNd's (which takes transposed first)
        conv: Callable[..., nn.Module] = type(module)
        return conv(weight.shape[1], weight.shape[0], module.kernel_size, module.stride, module.padding,
                    module.dilation, 1, bias, module.padding_mode)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return type(module)(weight.shape[0], module.eps, module.momentum, module.affine,
                            running_mean is not None)
    return None
