"""Training losses by name, on torch.nn.functional, with the tasks each one fits."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dltune.errors import ConfigError, UserCodeError
from dltune.experiment.sections import LossConfig
from dltune.imports import call, is_import_path, load, where
from dltune.registry import Registry

__all__ = ["LOSSES", "Loss", "LossContext", "build_loss", "class_weights", "distillation", "focal_loss",
           "resolve_loss_name"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LossContext:
    """What a loss needs to know of the data: the task and the training split's class counts."""

    task: str
    class_counts: np.ndarray | None = None  # (K,) examples per class in the training split


@dataclass(frozen=True)
class Loss:
    """A registered loss: a factory of fn(outputs, targets), the tasks it fits, and the config keys it uses
    beyond `name` (a key set to a non-default value for another loss is an error, not silently ignored)."""

    make: Callable[[LossConfig, LossContext], LossFn]
    tasks: frozenset[str]
    keys: frozenset[str] = frozenset()
    single_logit: bool = False  # one output (the positive class's logit) instead of one per class


LOSSES: Registry[Loss] = Registry("loss")
_CLASSES = frozenset({"classification", "binary"})
_REGRESSION = frozenset({"regression"})


def class_weights(cfg: LossConfig, ctx: LossContext) -> torch.Tensor | None:
    """Per-class weights: none, balanced (n / (k · n_c), as scikit-learn's "balanced"), or the list given."""
    if cfg.class_weights == "none" or ctx.class_counts is None:
        return None
    counts = np.asarray(ctx.class_counts, dtype=np.float64)
    if cfg.class_weights == "balanced":
        return torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)
    if len(cfg.class_weights) != len(counts):
        raise ConfigError(f"loss.class_weights: {len(cfg.class_weights)} weights for {len(counts)} classes")
    return torch.tensor(cfg.class_weights, dtype=torch.float32)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float, alpha: float | None = None,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) on softmax outputs: mean of −α_t (1 − p_t)^γ log p_t.

    logits (B, K), target (B,) class ids; α_t = alpha for class 1 and 1 − alpha for class 0 (binary);
    with per-class `weight`, the mean is weighted as F.cross_entropy weights it.
    """
    log_p = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)  # (B,)
    loss = -((1 - log_p.exp()) ** gamma) * log_p
    w = torch.ones_like(loss)
    if alpha is not None:
        w = torch.where(target == 1, alpha, 1 - alpha)
    if weight is not None:
        w = w * weight.to(loss.device)[target]
    return (w * loss).sum() / (w.sum() if weight is not None else len(loss))


def _cross_entropy(cfg: LossConfig, ctx: LossContext) -> LossFn:
    weight = class_weights(cfg, ctx)
    return lambda out, y: F.cross_entropy(out, y, weight=None if weight is None else weight.to(out.device),
                                          label_smoothing=cfg.label_smoothing)


def _bce(cfg: LossConfig, ctx: LossContext) -> LossFn:
    pos = None if cfg.pos_weight is None else torch.tensor(cfg.pos_weight)
    # outputs (B, 1): the positive class's logit
    return lambda out, y: F.binary_cross_entropy_with_logits(
        out.squeeze(-1), y.float(), pos_weight=None if pos is None else pos.to(out.device))


def _focal(cfg: LossConfig, ctx: LossContext) -> LossFn:
    if cfg.alpha is not None and ctx.task != "binary":
        raise ConfigError("loss.alpha: weighs the positive class of a binary task; for more classes use "
                          "loss.class_weights")
    weight = class_weights(cfg, ctx)
    return lambda out, y: focal_loss(out, y, cfg.gamma, cfg.alpha, weight)


def _regression(f: Callable[..., torch.Tensor], **kwargs: float) -> Callable[[LossConfig, LossContext], LossFn]:
    # outputs (B, 1) against targets (B,)
    return lambda cfg, ctx: lambda out, y: f(out.squeeze(-1), y, **kwargs)


LOSSES.register("cross_entropy", Loss(_cross_entropy, _CLASSES, frozenset({"class_weights", "label_smoothing"})))
LOSSES.register("bce", Loss(_bce, frozenset({"binary"}), frozenset({"pos_weight"}), single_logit=True))
LOSSES.register("focal", Loss(_focal, _CLASSES, frozenset({"class_weights", "gamma", "alpha"})))
LOSSES.register("mse", Loss(_regression(F.mse_loss), _REGRESSION))
LOSSES.register("mae", Loss(_regression(F.l1_loss), _REGRESSION))
LOSSES.register("huber", Loss(lambda cfg, ctx: _regression(F.huber_loss, delta=cfg.huber_delta)(cfg, ctx),
                              _REGRESSION, frozenset({"huber_delta"})))

_LOSS_KEYS = frozenset({"class_weights", "label_smoothing", "pos_weight", "gamma", "alpha", "huber_delta"})


def resolve_loss_name(cfg: LossConfig, task: str) -> str:
    """loss.name, with "auto" made cross_entropy for classes and mse for regression."""
    if cfg.name == "auto":
        return "mse" if task == "regression" else "cross_entropy"
    return cfg.name


def build_loss(cfg: LossConfig, ctx: LossContext, folders: Sequence[str] = (),
               given: Callable[..., Any] | None = None) -> tuple[LossFn, Loss]:
    """The loss function for the task; a loss that does not fit the task, or a setting it would
    ignore, is a config error. Your own (loss.name = "my_losses:focal", looked for in `folders` first, or `given`
    from Python) is fn(outputs, targets, **loss.args) -> a scalar tensor, or an nn.Module class made with them."""
    name = resolve_loss_name(cfg, ctx.task)
    own = given is not None or is_import_path(name)
    loss = _own_loss(cfg, folders, given) if own else LOSSES.get(name, path="loss.name")
    if ctx.task not in loss.tasks:
        fits = sorted(n for n, entry in LOSSES.items() if ctx.task in entry.tasks)
        raise ConfigError(f"loss.name: {name} does not fit a {ctx.task} task; use one of: auto, {', '.join(fits)}")
    defaults = LossConfig()
    for key in sorted(_LOSS_KEYS - loss.keys):
        if getattr(cfg, key) != getattr(defaults, key):
            users = sorted(n for n, entry in LOSSES.items() if key in entry.keys)
            raise ConfigError(f"loss.{key}: applies to {' / '.join(users)}, not to {name}")
    if cfg.threshold != "argmax" and ctx.task != "binary":
        raise ConfigError(f"loss.threshold: a decision threshold needs a binary task, not {ctx.task}")
    if cfg.args and not own:
        raise ConfigError(f"loss.args: only for a loss of your own (loss.name = \"my_losses:focal\"), not {name}")
    return loss.make(cfg, ctx), loss


def _own_loss(cfg: LossConfig, folders: Sequence[str], given: Callable[..., Any] | None) -> Loss:
    """The user's loss as a registry entry: one logit per class (or one prediction), no built-in keys."""
    named = where("loss.name", cfg.name, given)
    fn = given if given is not None else load(cfg.name, "loss.name", folders)
    if isinstance(fn, type):  # an nn.Module class (or any class): made once, with loss.args
        made = call(fn, named, **cfg.args)
        return Loss(lambda c, ctx: _checked(made, named), frozenset({"classification", "binary", "regression"}))
    args = dict(cfg.args)
    return Loss(lambda c, ctx: _checked(lambda out, y: fn(out, y, **args), named),
                frozenset({"classification", "binary", "regression"}))


def _checked(fn: Callable[[torch.Tensor, torch.Tensor], Any], named: str) -> LossFn:
    """The user's loss, with what it raises or returns wrong said by its key."""
    def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        value = call(fn, named, outputs, targets)
        if not isinstance(value, torch.Tensor) or value.ndim != 0:
            raise UserCodeError(f"{named}: returned {type(value).__name__}"
                                f"{'' if not isinstance(value, torch.Tensor) else f' of shape {list(value.shape)}'}; "
                                "a loss must be a scalar tensor")
        return value

    return loss


def distillation(teacher: torch.nn.Module, task_loss: LossFn, temperature: float,
                 alpha: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss of knowledge distillation (Hinton et al. 2015), called as loss(outputs, inputs, targets):
    alpha · T² · KL(softmax(teacher / T) ‖ softmax(student / T)) + (1 - alpha) · task_loss(outputs, targets).
    T² keeps the soft term's gradients on the scale of the hard term's as T grows. The teacher sees the same
    (augmented) inputs, in eval mode and without gradients."""
    teacher.eval().requires_grad_(False)

    def loss(outputs: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            soft_targets = F.log_softmax(teacher(inputs) / temperature, dim=1)
        soft = F.kl_div(F.log_softmax(outputs / temperature, dim=1), soft_targets, reduction="batchmean",
                        log_target=True) * temperature**2
        return alpha * soft + (1 - alpha) * task_loss(outputs, targets) if alpha < 1 else soft

    return loss
