"""train.precision: the float type a run's forward pass computes in (torch.autocast), and fp16's loss scaling
(torch.amp.GradScaler). Weights, gradients and the optimizer's state stay fp32; losses and metrics are read in fp32.

One `Precision` serves the training loop, evaluation and the finders, so that each computes as the run does: the
best lr and a batch's memory both depend on the precision."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from dltune.errors import ConfigError

__all__ = ["DTYPES", "Precision", "precision_for", "unsupported"]

DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Precision:
    """How a run's steps compute: autocast to `dtype` on `device` (None: fp32, autocast off), and for fp16 a
    GradScaler that scales the loss before backward and skips a step whose gradients overflowed."""

    name: str  # fp32 | bf16 | fp16
    device: torch.device
    scaler: torch.amp.GradScaler | None = None

    @property
    def dtype(self) -> torch.dtype | None:
        return DTYPES[self.name]

    @contextmanager
    def autocast(self) -> Iterator[None]:
        """The forward pass's block: torch.autocast to the run's dtype (nothing for fp32)."""
        if self.dtype is None:
            yield
            return
        with torch.autocast(self.device.type, dtype=self.dtype):
            yield

    def backward(self, loss: torch.Tensor) -> None:
        """loss.backward(), the loss scaled first where a GradScaler is."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """The gradients as they really are (divided by the scale), before clipping reads them."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """optimizer.step(), or the GradScaler's: False where it skipped the step (gradients with inf or NaN, from
        an fp16 overflow; the scale is then halved). A skip is known by the scale falling, which reads it (fp16
        only)."""
        if self.scaler is None:
            optimizer.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= before

    def state_dict(self) -> dict[str, Any] | None:
        """What a checkpoint keeps (the GradScaler's scale and growth counter); None without a scaler."""
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state is not None:
            self.scaler.load_state_dict(state)


def precision_for(name: str, device: torch.device) -> Precision:
    """train.precision on `device`, refused where the device cannot compute in it (the reason names the key)."""
    why = unsupported(name, device)
    if why is not None:
        raise ConfigError(f"train.precision: {why}")
    scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
    return Precision(name, device, scaler)


def unsupported(name: str, device: torch.device) -> str | None:
    """Why `device` cannot train in precision `name`; None where it can."""
    if name == "fp32":
        return None
    if device.type == "cuda":
        if name == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
            card = torch.cuda.get_device_name(device)
            return (f'"bf16" on {card}, which has no bf16 arithmetic (a GPU since Ampere has it); use "fp16" '
                    '(with loss scaling) or "fp32"')
        return None
    if device.type == "cpu":
        if name == "fp16" and not _cpu_has("fp16"):
            return ('"fp16" on this CPU, where torch has no fast fp16 kernels (oneDNN needs AVX512-FP16 or AMX-FP16; '
                    'emulated, a step is slower than fp32); use "bf16" where the CPU has it, or "fp32"')
        if name == "bf16" and not _cpu_has("bf16"):
            return ('"bf16" on this CPU, where torch has no bf16 kernels (oneDNN needs AVX-512 or AMX); use "fp32", '
                    "or a GPU")
        return None
    if not _works(name, device):
        return f'"{name}" is not supported by torch on {device.type}; use "fp32"'
    return None


@functools.cache
def _cpu_has(kind: str) -> bool:
    """Whether torch's oneDNN computes in `kind` (bf16 or fp16) on this CPU (its own check of the instruction set)."""
    checks = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}
    with contextlib.suppress(AttributeError, RuntimeError):
        return bool(getattr(torch.ops.mkldnn, checks[kind])())
    return False


def _works(name: str, device: torch.device) -> bool:
    """Whether a small matmul runs under autocast to `name` on `device` (a device torch has no check for)."""
    try:
        x = torch.ones(2, 2, device=device)
        with torch.autocast(device.type, dtype=DTYPES[name]):
            (x @ x).sum().item()
    except (RuntimeError, AssertionError):
        return False
    return True
