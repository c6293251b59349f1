"""An ensemble as one torch module, and its folder read back without the study that made it.

The folder holds ensemble.json (the method, the members and their weights, the data they were trained on, and the
evaluation) and members/NAME/ with each member's config.toml and model.safetensors. A soup is one model: its folder
is also a run folder (config.toml, model.safetensors, metrics.json), which `dltune predict`, `compress` and
`train`'s readers take as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dltune.ensembles.combine import combine
from dltune.errors import ConfigError
from dltune.run.assembly import recorded_splits, saved_model

__all__ = ["MARK", "Ensemble", "load_ensemble", "probabilities"]

MARK = "ensemble.json"


def probabilities(outputs: torch.Tensor, task: str) -> torch.Tensor:
    """Class probabilities (examples, classes) from a model's outputs: softmax of logits, or for one logit of the
    positive class (a binary task's bce) [1 - p, p]; regression outputs as they are, one value per example."""
    if task == "regression":
        return outputs.reshape(len(outputs))
    if outputs.shape[1] == 1:
        p = torch.sigmoid(outputs[:, 0])
        return torch.stack([1 - p, p], dim=1)
    return torch.softmax(outputs, dim=1)


class Ensemble(nn.Module):
    """Members whose outputs are combined: forward gives the log of the combined class probabilities (so that
    softmax and argmax read it as logits), or for regression the combined prediction; in float64. `vote` combines the
    members' top classes: each class's weighted share of the vote (its mean probability breaks ties)."""

    weights: torch.Tensor  # a buffer: (members,) float64

    def __init__(self, members: list[nn.Module], weights: list[float], method: str, task: str) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float64))
        self.method, self.task = method, task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the combination that was measured (combine.combine), on the members' probabilities or predictions
        outs = np.stack([probabilities(m(x), self.task).double().cpu().numpy() for m in self.members])
        combined = torch.from_numpy(combine(outs, self.weights.cpu().numpy(), self.method))
        if self.task == "regression":
            return combined.unsqueeze(1)
        return torch.log(combined.clamp_min(1e-12))  # float64: vote's tie-break (1e-6) would not survive float32


def load_ensemble(path: str | Path, key: str = "MODEL_DIR") -> tuple[nn.Module, dict[str, Any]]:
    """The ensemble (or soup) saved at `path`, in eval mode on the CPU, and its manifest (ensemble.json)."""
    folder = Path(path)
    manifest_file = folder / MARK
    if not manifest_file.is_file():
        raise ConfigError(f"{key}: {folder} has no {MARK}: not an ensemble's folder")
    manifest = json.loads(manifest_file.read_text())
    if manifest.get("method") in ("uniform-soup", "greedy-soup"):
        return saved_model(folder, None, key), manifest
    splits = recorded_splits(manifest.get("data"), f"{key}: {manifest_file}")
    members = [saved_model(folder / m["folder"], splits, f"{key}: {folder / m['folder']}")
               for m in manifest["members"]]
    weights = [m["weight"] for m in manifest["members"]]
    return Ensemble(members, weights, manifest["method"], manifest["data"]["task"]).eval(), manifest
