"""A run's state between two epochs, saved to its run folder and loaded back, so that a killed or paused run
goes on exactly where it was: the same weights and history as a run that was never stopped.

A checkpoint is the folder `checkpoint/` of the run folder: `epoch-K.safetensors` holds every tensor (the
model's, the optimizer's moments, early stopping's best weights, the random generators' states) and
`state.json` everything else (the epoch, the history, the schedule's counters, the tensors' names). No pickle:
safetensors and JSON load nothing but data. `state.json` is written last, atomically, and names its tensor
file: a kill while a checkpoint is being written leaves the one before whole, and the next save removes the
tensor file that no `state.json` names any more.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dltune.errors import DataError
from dltune.files import atomic_write, folder_lock, folder_locked, write_text

__all__ = ["CHECKPOINT", "Checkpoint", "Paused", "checkpoint_epoch", "checkpoint_lock", "has_checkpoint", "held",
           "load_checkpoint", "save_checkpoint"]

CHECKPOINT = "checkpoint"  # the folder in a run folder
STATE = "state.json"
VERSION = 1


@dataclass
class Checkpoint:
    """What the training loop needs to go on after `epoch`: plain data and tensors (nested dicts and lists)."""

    epoch: int  # epochs done
    loop: dict[str, Any]  # the loop's own counters: history, train_seconds, steps_before, last_loss
    state: dict[str, Any]  # model, optimizer, schedule, early stopping, random generators (state_dicts)


def has_checkpoint(run_dir: str | Path) -> bool:
    return (Path(run_dir) / CHECKPOINT / STATE).is_file()


def checkpoint_epoch(run_dir: str | Path) -> int | None:
    """The epoch after which the run folder's checkpoint was saved; None without one (or one that cannot be read:
    load_checkpoint says why)."""
    try:
        return int(json.loads((Path(run_dir) / CHECKPOINT / STATE).read_text(encoding="utf-8"))["epoch"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None


@contextmanager
def checkpoint_lock(run_dir: str | Path) -> Iterator[Path]:
    """The run's checkpoint folder, created, held by this process for the block (a second process that would
    resume the same run is refused with this one's pid; the lock ends with the process however it ends)."""
    folder = Path(run_dir) / CHECKPOINT
    folder.mkdir(parents=True, exist_ok=True)
    with folder_lock(folder, "run (training or resuming)"):
        yield folder


def held(run_dir: str | Path) -> bool:
    """Whether a process holds the run folder now (it trains or resumes that run). A run folder without
    metrics.json that no process holds was left by a process that was killed."""
    return folder_locked(Path(run_dir) / CHECKPOINT)


def save_checkpoint(run_dir: str | Path, checkpoint: Checkpoint) -> None:
    """Write `checkpoint` into the run folder's checkpoint/: the tensors, then state.json naming them (atomic)."""
    folder = Path(run_dir) / CHECKPOINT
    tensors: dict[str, torch.Tensor] = {}
    plain = _split(checkpoint.state, "", tensors)
    name = f"epoch-{checkpoint.epoch}.safetensors"
    with atomic_write(folder / name) as tmp:
        save_file(tensors, str(tmp))
    document = {"version": VERSION, "epoch": checkpoint.epoch, "tensors": name, "loop": checkpoint.loop,
                "state": plain}
    write_text(folder / STATE, json.dumps(document) + "\n")  # NaN kept (json's NaN token): a loss can be one
    for old in folder.glob("epoch-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    """The run folder's last checkpoint. A damaged one is a DataError that names the file."""
    folder = Path(run_dir) / CHECKPOINT
    path = folder / STATE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        tensor_path = folder / document["tensors"]
        epoch, loop, plain = int(document["epoch"]), document["loop"], document["state"]
    except FileNotFoundError:
        raise DataError(f"{path}: no checkpoint in this run folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: not a dltune checkpoint ({type(e).__name__}: {e})") from None
    if document.get("version") != VERSION:
        raise DataError(f"{path}: checkpoint version {document.get('version')!r}; this dltune reads {VERSION}")
    try:
        tensors = load_file(str(tensor_path))
    except (OSError, SafetensorError) as e:
        raise DataError(f"{tensor_path}: cannot read the checkpoint's tensors ({e})") from None
    try:
        state = _joined(plain, tensors)
    except KeyError as e:
        raise DataError(f"{tensor_path}: the checkpoint's tensor {e} is missing") from None
    return Checkpoint(epoch, loop, state)


def _split(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """`value` as JSON-ready data, its tensors moved into `tensors` (each named by its path) and replaced by
    {"tensor": name}. Keys that are not strings (an optimizer's parameter numbers) and tuples are marked, so that
    _joined gives back exactly what was saved."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().cpu().contiguous().clone()  # safetensors refuses shared memory
        return {"tensor": key}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {"dict": {k: _split(v, f"{key}.{k}", tensors) for k, v in value.items()}}
        return {"items": [[k, _split(v, f"{key}.{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        items = [_split(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
        return {"tuple": items} if isinstance(value, tuple) else items
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot checkpoint a {type(value).__name__} at {key or 'the top'}")


def _joined(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_joined(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "tensor" in value:
        return tensors[value["tensor"]]
    if "dict" in value:
        return {k: _joined(v, tensors) for k, v in value["dict"].items()}
    if "items" in value:
        return {k: _joined(v, tensors) for k, v in value["items"]}
    if "tuple" in value:
        return tuple(_joined(v, tensors) for v in value["tuple"])
    return float(value["float"])


class Paused(BaseException):
    """A run paused by its `on_epoch` (the answer "pause"): its state is saved in its run folder's checkpoint/, and
    `train(config, out_dir=run_dir, resume=True)` goes on from there. A BaseException, as KeyboardInterrupt is: a
    handler of errors (`except Exception`) must not take a pause for a failure."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"paused after epoch {epoch}")
        self.epoch = epoch
        # set on the way up by whoever can go on with the run (a search's trial): go on with it, or give it up
        self.again: Callable[[], Any] | None = None
        self.abandon: Callable[[], None] | None = None
