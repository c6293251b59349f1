"""Transfer learning (§8.3): a model starts from the weights of a trained one, with some layers frozen, unfrozen
gradually, and learning rates spread over layer groups; and a fine_tune recipe after fastai's.

Layer groups are the model's layers in the order they were registered: each module with weights of its own
(Linear, convolution, recurrent) starts a group, and a normalization layer joins the group before it. The last group
is the head (the output layer); "body" is every group but the head. Discriminative learning rates space the groups'
rates geometrically from the head's (optim.lr) down to optim.lr / lr_mult for the lowest group, as fastai's
slice(lr / lr_mult, lr) does.

Weights load from safetensors only (a run folder's model.safetensors, or a .safetensors file): nothing is unpickled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import torch
from torch import nn
from torch.optim import lr_scheduler as sched

from dltune.errors import ConfigError
from dltune.experiment.sections import TransferConfig

__all__ = ["FINE_TUNE", "Freezer", "Loaded", "fine_tune_schedule", "layer_groups", "load_pretrained",
           "param_groups"]

NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


class _FineTune(TypedDict):
    """FINE_TUNE's settings, each with its own type (train_bn is a flag, the others are numbers)."""

    head_pct_start: float
    head_div: float
    pct_start: float
    div: float
    final_div: float
    after_head: float
    train_bn: bool


# The fine_tune recipe after fastai's fine_tune(epochs, base_lr, freeze_epochs=1, lr_mult=100, pct_start=0.3,
# div=5.0), which runs fit_one_cycle(freeze_epochs, base_lr, pct_start=0.99) on the head (one-cycle's own div = 25,
# div_final = 1e5), then unfreezes and runs fit_one_cycle(epochs, slice(base_lr / 2 / lr_mult, base_lr / 2),
# pct_start=0.3, div=5). Three of its values changed after issue 24, each measured by benchmarks/bench_transfer.py:
# the second cycle peaks at base_lr (after_head 1; fastai halves it) for every layer group (transfer.lr_mult's
# default 1; at fastai's 100 a pretrained hidden layer, which dltune counts in the body, peaked at optim.lr / 9),
# chosen on the README's demo (seeds 1-10); and it starts at its peak (div 1; fastai warms up from a fifth), chosen
# on the BatchNorm task (seeds 1-10). All checked on three tasks at seeds 11-30. train_bn: the normalization layers
# of a frozen body train too (fastai's train_bn=True); measured without a clear effect, so they stay frozen.
FINE_TUNE: _FineTune = {"head_pct_start": 0.99, "head_div": 25.0, "pct_start": 0.3, "div": 1.0, "final_div": 1e5,
                         "after_head": 1.0, "train_bn": False}


@dataclass
class Loaded:
    """What loading the pre-trained weights did, as a run records it."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # the model's weights the source did not have
    unexpected: list[str] = field(default_factory=list)  # the source's weights the model does not have
    head: str = "kept"  # kept | reset (why)

    def describe(self) -> str:
        said = f"transfer: {len(self.loaded)} weights loaded from {self.source}; head {self.head}"
        if self.missing:
            said += f"; missing (left as initialised): {', '.join(self.missing)}"
        if self.unexpected:
            said += f"; unexpected (not used): {', '.join(self.unexpected)}"
        return said


def layer_groups(model: nn.Module) -> list[list[str]]:
    """The model's layer groups, lowest first (the head last): each a list of parameter names."""
    groups: list[list[str]] = []
    for name, module in model.named_modules():
        own = [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
        if not own:
            continue
        if isinstance(module, NORMS) and groups:
            groups[-1].extend(own)
        else:
            groups.append(own)
    return groups


def _head(model: nn.Module) -> list[str]:
    groups = layer_groups(model)
    if len(groups) < 2:
        raise ConfigError("transfer: the model has a single layer with weights; transfer needs a body and a head")
    return groups[-1]


def load_pretrained(model: nn.Module, cfg: TransferConfig, classes: Sequence[str] | None = None) -> Loaded:
    """Load transfer.from into `model` (in place): every weight of the same name and shape; the head too when
    transfer.head = "keep", its shape matches, and (a run folder) the run predicted the same `classes`; else the
    head stays freshly initialised, and the record says why."""
    import json

    from safetensors.torch import load_file

    assert cfg.from_ is not None
    source = Path(cfg.from_)
    file = source / "model.safetensors" if source.is_dir() else source
    if source.is_dir() and not file.is_file():
        raise ConfigError(f"transfer.from: {source} has no model.safetensors: not a run folder with weights")
    if not source.is_dir():
        if not source.exists():
            raise ConfigError(f"transfer.from: {source}: no such run folder or file")
        if source.suffix != ".safetensors":
            raise ConfigError(f"transfer.from: {source}: give a run folder or a .safetensors file (dltune never "
                              "unpickles a .pt or .pth file)")
    try:
        theirs = load_file(str(file))
    except Exception as e:  # safetensors raises its own errors on a damaged file
        raise ConfigError(f"transfer.from: {file} cannot be read: {e}") from None
    ours = model.state_dict()
    head = set(_head(model))
    head_buffers = {k for k in ours if k.rpartition(".")[0] in {h.rpartition(".")[0] for h in head}}
    record = Loaded(str(source))
    recorded = source / "metrics.json"
    theirs_classes = (json.loads(recorded.read_text()).get("data") or {}).get("classes") \
        if source.is_dir() and recorded.is_file() else None
    if cfg.head == "reset":
        record.head = "reset (transfer.head = \"reset\")"
    elif theirs_classes is not None and classes is not None and list(theirs_classes) != list(classes):
        record.head = (f"reset: the source predicts classes {', '.join(map(str, theirs_classes))}; this task "
                       f"{', '.join(map(str, classes))}")
    else:
        for key in sorted(head & theirs.keys()):
            if theirs[key].shape != ours[key].shape:
                record.head = (f"reset: the source's {key} has shape {tuple(theirs[key].shape)}, this task needs "
                               f"{tuple(ours[key].shape)} (another class count)")
                break
    keep_head = record.head == "kept"
    state = {}
    for key, value in theirs.items():
        if key not in ours:
            record.unexpected.append(key)
            continue
        if key in head_buffers and not keep_head:
            continue
        if value.shape != ours[key].shape:
            raise ConfigError(f"transfer.from: {file} does not fit this model: {key!r} has shape "
                              f"{tuple(value.shape)} there and {tuple(ours[key].shape)} here")
        state[key] = value
    if not state:
        raise ConfigError(f"transfer.from: {file}: none of its {len(theirs)} weights fits this model (another "
                          f"architecture: its first, {next(iter(theirs), '-')!r}, is not a weight of this model)")
    model.load_state_dict(state, strict=False)
    record.loaded = sorted(state)
    record.missing = sorted(k for k in ours if k not in state and not (k in head_buffers and not keep_head))
    return record


def _frozen_names(model: nn.Module, freeze: str | Sequence[str]) -> list[list[str]]:
    """The frozen parameters, by layer group (lowest first), for transfer.freeze."""
    groups = layer_groups(model)
    if freeze == "body":
        return groups[:-1]
    names = [n for n, _ in model.named_parameters()]
    for prefix in freeze:
        if not any(n == prefix or n.startswith(prefix + ".") for n in names):
            modules = sorted({n.rpartition(".")[0] for n in names})
            raise ConfigError(f"transfer.freeze: {prefix!r} names no module of the model; its modules with weights: "
                              f"{', '.join(modules)}")
    chosen = [[n for n in g if any(n == p or n.startswith(p + ".") for p in freeze)] for g in groups]
    return [g for g in chosen if g]


class Freezer:
    """Freezes parameters (requires_grad False) and unfreezes them at transfer.unfreeze_at: at each of those epochs
    the next frozen group from the head down; at the last one, every group left. train_norms: the normalization
    layers among them are left to train."""

    def __init__(self, model: nn.Module, freeze: str | Sequence[str], unfreeze_at: Sequence[int],
                 train_norms: bool = False) -> None:
        self.params = dict(model.named_parameters())
        self.frozen = _frozen_names(model, freeze) if freeze else []
        if train_norms:
            norms = {f"{m}.{p}" if m else p for m, module in model.named_modules() if isinstance(module, NORMS)
                     for p, _ in module.named_parameters(recurse=False)}
            self.frozen = [kept for kept in ([n for n in g if n not in norms] for g in self.frozen) if kept]
        self.unfreeze_at = list(unfreeze_at)
        for group in self.frozen:
            for name in group:
                self.params[name].requires_grad_(False)

    def at_epoch(self, epoch: int) -> bool:
        """Before `epoch` (1-based) trains: unfreeze what transfer.unfreeze_at says; True if anything was."""
        if epoch not in self.unfreeze_at or not self.frozen:
            return False
        last = epoch == self.unfreeze_at[-1]
        thawed = self.frozen if last else [self.frozen[-1]]
        for group in thawed:
            for name in group:
                self.params[name].requires_grad_(True)
        self.frozen = [] if last else self.frozen[:-1]
        return True


def param_groups(model: nn.Module, lr: float, lr_mult: float) -> list[dict]:
    """The optimizer's parameter groups: one per layer group, lowest first, with rates spaced geometrically from
    lr / lr_mult up to lr (the head). (train keeps a single group where lr_mult is 1.)"""
    params = dict(model.named_parameters())
    groups = layer_groups(model)
    n = len(groups)
    return [{"params": [params[name] for name in g], "lr": lr * lr_mult ** (-(n - 1 - i) / max(1, n - 1))}
            for i, g in enumerate(groups)]


def _one_cycle(t: int, total: int, pct_start: float, div: float, final_div: float) -> float:
    """torch's OneCycleLR (cosine, two phases) as a factor of its peak, after t of `total` steps."""
    up = float(pct_start * total) - 1
    if t <= up:
        start, end, pct = 1.0 / div, 1.0, t / up if up > 0 else 1.0
    else:
        start, end, pct = 1.0, 1.0 / (div * final_div), (t - up) / (total - 1 - up) if total - 1 > up else 1.0
    return end + (start - end) / 2.0 * (math.cos(math.pi * min(pct, 1.0)) + 1)


def fine_tune_schedule(optimizer: torch.optim.Optimizer, head_steps: int, rest_steps: int) -> sched.LambdaLR:
    """The fine_tune recipe as one per-step factor on every group's rate (optim.lr, spread by lr_mult): a one-cycle
    over the first `head_steps` (the head alone trains), then one over `rest_steps` at after_head times the rates
    (none: with transfer.freeze_epochs = 0, a single cycle)."""
    f = FINE_TUNE

    def factor(t: int) -> float:
        if t < head_steps:
            return _one_cycle(t, head_steps, f["head_pct_start"], f["head_div"], f["final_div"])
        return f["after_head"] * _one_cycle(t - head_steps, rest_steps, f["pct_start"], f["div"], f["final_div"])

    return sched.LambdaLR(optimizer, factor)
