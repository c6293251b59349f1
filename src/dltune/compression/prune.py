"""Pruning: structured (torch-pruning removes whole hidden units and channels, and the model stays dense and
smaller) and unstructured (the smallest weights set to zero: the same dense model, smaller only when stored sparse).

torch.nn.utils.prune is not used for structured pruning: it keeps every weight and adds a mask, so the model is no
faster (measured 3x slower at batch 1 with the mask's extra multiply).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dltune.errors import ConfigError
from dltune.experiment.sections import MagnitudeConfig, PruneConfig

__all__ = ["head_of", "magnitude_prune", "prunable", "structured_prune", "write_sparse"]

_CONV = nn.modules.conv._ConvNd


def head_of(model: nn.Module, example: torch.Tensor) -> nn.Module | None:
    """The layer whose output is the model's output (its units are the classes: never pruned)."""
    produced: dict[int, nn.Module] = {}
    hooks = [m.register_forward_hook(lambda m, _, out: produced.__setitem__(id(out), m))
             for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            out = model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return produced.get(id(out))


def prunable(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, _CONV))]


def structured_prune(model: nn.Module, example: torch.Tensor, cfg: PruneConfig,
                     finetune: Callable[[nn.Module, int], None], key: str = "compress.prune") -> nn.Module:
    """`model` with cfg's share of hidden units / channels removed in cfg.steps steps (lowest L2 norm of each
    coupled group first, as torch-pruning's MetaPruner ranks them), `finetune(model, step)` after each step."""
    import torch_pruning as tp

    head = head_of(model, example)
    kinds = {nn.Linear: cfg.linear, _CONV: cfg.conv}
    ratios = {m: next(r for kind, r in kinds.items() if isinstance(m, kind) and r is not None)
              for m in prunable(model) if m is not head and any(isinstance(m, k) and r is not None
                                                                 for k, r in kinds.items())}
    if not [m for m in prunable(model) if m is not head]:
        raise ConfigError(f"{key}: the model has no Linear or convolution layer before its output layer to prune")
    try:
        pruner = tp.pruner.MetaPruner(
            model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
            global_pruning=cfg.scope == "global",
            pruning_ratio=cfg.ratio, pruning_ratio_dict=ratios or None, iterative_steps=cfg.steps,
            ignored_layers=[head] if head is not None else [])
    except Exception as e:  # torch-pruning traces the model: code it cannot follow fails here
        raise ConfigError(f"{key}: torch-pruning cannot trace this model: {type(e).__name__}: {e}") from None
    for step in range(1, cfg.steps + 1):
        before = sum(p.numel() for p in model.parameters())
        pruner.step()
        if step == 1 and sum(p.numel() for p in model.parameters()) == before:
            raise ConfigError(f"{key}: torch-pruning removed nothing from this model: it could not trace how its "
                              "layers connect (a forward pass that leaves autograd, through numpy for example, "
                              "or layers it does not know)")
        finetune(model, step)
    return model


def magnitude_prune(model: nn.Module, cfg: MagnitudeConfig, example: torch.Tensor) -> dict[str, torch.Tensor]:
    """Zero the cfg.ratio smallest-magnitude weights of all Linear and conv layers but the output layer, ranked
    together; the masks (1 where kept), by parameter name, to keep the zeros through fine-tuning."""
    head = head_of(model, example)
    names = {id(m.weight): f"{n}.weight" for n, m in model.named_modules() if m in prunable(model) and m is not head}
    weights = [p for p in model.parameters() if id(p) in names]
    if not weights:
        raise ConfigError("compress.magnitude: the model has no Linear or convolution weights before its output layer")
    magnitudes = torch.cat([w.detach().abs().flatten() for w in weights])
    k = int(cfg.ratio * magnitudes.numel())
    threshold = magnitudes.kthvalue(k).values if k > 0 else magnitudes.min() - 1
    masks = {}
    with torch.no_grad():
        for w in weights:
            mask = (w.abs() > threshold).to(w.dtype)
            w.mul_(mask)
            masks[names[id(w)]] = mask
    return masks


def write_sparse(model: nn.Module, path: Path) -> int:
    """The weights stored sparse in safetensors: each tensor with zeros as a bit mask (1 bit per weight, packed) and
    its nonzero values; the others as they are. Returns the file's size in bytes."""
    from safetensors.numpy import save_file

    tensors: dict[str, np.ndarray] = {}
    for name, value in model.state_dict().items():
        array = value.detach().cpu().numpy()
        if array.ndim >= 2 and (array == 0).any():
            nonzero = array != 0
            tensors[f"{name}.mask"] = np.packbits(nonzero.ravel())
            tensors[f"{name}.values"] = np.ascontiguousarray(array[nonzero])
            tensors[f"{name}.shape"] = np.array(array.shape, dtype=np.int64)
        else:
            tensors[name] = np.ascontiguousarray(array)
    save_file(tensors, str(path))
    return path.stat().st_size
