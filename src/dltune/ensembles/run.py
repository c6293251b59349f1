"""dltune ensemble: the best trials of a search (or the seeds of one ablation variant) combined into one model,
fitted on the validation split, judged on the test split against the best single member, and saved as a folder
that loads without the study (ensemble.model)."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dltune.data import TensorSplits
from dltune.ensembles.combine import combine, fit
from dltune.ensembles.evaluate import calibration, paired_difference, scores
from dltune.ensembles.members import Member, NoMembers, Selection, select
from dltune.ensembles.model import MARK, probabilities
from dltune.ensembles.soup import average, check_soup, greedy_soup
from dltune.errors import ConfigError
from dltune.files import atomic_write, new_output, write_text
from dltune.run.assembly import Data, Splits, saved_model, splits_for
from dltune.run.runtime import torch_settings

__all__ = ["METHODS", "EnsembleResult", "NoMembers", "ensemble"]

METHODS = ["mean", "vote", "weighted", "greedy", "uniform-soup", "greedy-soup"]
SOUPS = {"uniform-soup", "greedy-soup"}
ALIASES = {"soup": "greedy-soup"}
NEEDS_VAL = {"weighted", "greedy", "greedy-soup"}


@dataclass
class EnsembleResult:
    """What `ensemble` made and measured; `to_dict` is ensemble.json's evaluation and the --json output."""

    source: str
    out_dir: str
    method: str
    task: str
    ranked_by: str
    members: list[dict[str, Any]]  # name, source run folder, weight, val and test scores
    test: dict[str, float]  # the ensemble's
    best_single: dict[str, Any]  # the member best on validation: name and test scores
    difference: dict[str, Any]  # ensemble - best single, with its paired bootstrap interval
    by_members: list[dict[str, Any]] = field(default_factory=list)  # k, val and test scores of the top k
    calibration: dict[str, Any] = field(default_factory=dict)  # ensemble and best single (classification)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ensemble(source: str | Path | None = None, out_dir: str | Path | None = None, *, top: int | None = None,
             method: str = "greedy", variant: str | None = None, storage: str | None = None,
             study: str | None = None, data: Data | None = None) -> EnsembleResult:
    """Combine the top `top` completed trials of the search in SOURCE (default 5), or every seed of the ablation
    variant `variant`, by `method`: mean, vote, weighted, greedy (ensemble selection), uniform-soup or greedy-soup
    ("soup"). SOURCE is a search's or an ablation's output folder; or give `storage` (with `study` when it holds
    several). The ensemble is written to `out_dir` (default: SOURCE-ensemble, -2, ... when taken; a given folder
    must be new or empty). `data` replaces data.name, as for `train`. A source with no completed trial or run to
    combine raises NoMembers (a DltuneError), before anything is written."""
    start = time.perf_counter()
    method = ALIASES.get(method, method)
    if method not in METHODS:
        raise ConfigError(f"--method {method}: unknown; methods: {', '.join(METHODS)} (soup = greedy-soup)")
    chosen = select(source, top=top, variant=variant, storage=storage, study=study)
    members = chosen.members
    _check_alike(members)
    if method in SOUPS:
        check_soup([m.run for m in members], [m.name for m in members])
    config = members[0].run.config
    default = Path(source) if source is not None else Path("runs") / chosen.study
    with new_output(default.parent / f"{default.name}-ensemble", out_dir, MARK, "dltune ensemble",
                    "ensemble") as out:
        with torch_settings(config):
            splits = splits_for(config, data)
            result = _build(chosen, method, splits, out)
        result.source = str(source if source is not None else chosen.storage)
        result.seconds = time.perf_counter() - start
        _write_manifest(out, result, chosen, splits)
    return result


def _check_alike(members: list[Member]) -> None:
    """Members trained on the same data (same splits) and predicting the same classes."""
    first = members[0]
    info = first.run.metrics.get("data") or {}
    for m in members[1:]:
        theirs = m.run.metrics.get("data") or {}
        if theirs.get("classes") != info.get("classes") or theirs.get("task") != info.get("task"):
            raise ConfigError(f"members with different class counts: {first.name} predicts {_classes(info)}, "
                              f"{m.name} {_classes(theirs)}")
        if m.run.config.data != first.run.config.data:
            raise ConfigError(f"{first.name} and {m.name} were trained on different data ([data] differs); an "
                              "ensemble's members are judged on the same validation and test examples")


def _classes(info: dict[str, Any]) -> str:
    classes = info.get("classes")
    return f"{len(classes)} classes ({', '.join(map(str, classes))})" if classes else str(info.get("task"))


def _outputs(net: torch.nn.Module, x: torch.Tensor, task: str) -> np.ndarray:
    with torch.no_grad():
        outs = [probabilities(net(x[i : i + 1024]), task) for i in range(0, len(x), 1024)]
    return torch.cat(outs).double().numpy()


def _build(chosen: Selection, method: str, splits: Splits, out: Path) -> EnsembleResult:
    if not isinstance(splits.test, tuple):
        raise ConfigError("data: ensembles read the splits as tensors; a Dataset of your own is not supported here")
    task, scale = splits.task, splits.target_scale
    members = chosen.members
    if splits.val is None and method in NEEDS_VAL:
        raise ConfigError(f"--method {method}: fits on the validation split, and data.val_fraction leaves none")
    x_test, y_test = splits.test[0], splits.test[1].numpy()
    nets = [saved_model(m.run.path, splits, m.name) for m in members]
    outputs = [_outputs(n, x_test, task) for n in nets]
    if len({o.shape for o in outputs}) > 1:
        raise ConfigError("members with different class counts: their outputs have shapes "
                          + ", ".join(f"{m.name} {o.shape[1:]}" for m, o in zip(members, outputs, strict=True)))
    test = np.stack(outputs)
    validation = None  # (the members' outputs, the targets) on the validation split, where there is one
    if splits.val is not None:
        validation = (np.stack([_outputs(n, splits.val[0], task) for n in nets]), splits.val[1].numpy())
    higher = task != "regression"
    val_scores = ([scores(v, validation[1], task, scale) for v in validation[0]] if validation is not None
                  else [{} for _ in members])
    # the best single member, and the order greedy methods take members in: best on validation first
    key = (lambda i: (-val_scores[i]["accuracy"], val_scores[i]["log_loss"])) if higher else \
        (lambda i: val_scores[i]["mse"])
    order = sorted(range(len(members)), key=key) if validation is not None else list(range(len(members)))
    best = order[0]

    def made(indices: list[int]) -> tuple[np.ndarray, np.ndarray | None, list[float], dict]:
        """The ensemble of members `indices`: its test and val outputs, a weight per member, and details."""
        if method in SOUPS:
            return _soup(method, [members[i] for i in indices], [order.index(i) for i in indices], splits)
        fit_on, fit_targets = validation if validation is not None else (test, y_test)
        fitted = fit(method, fit_on[indices], fit_targets)
        return (combine(test[indices], fitted.weights, method),
                combine(validation[0][indices], fitted.weights, method) if validation is not None else None,
                fitted.weights, fitted.details)

    everyone = list(range(len(members)))
    test_out, val_out, weights, details = made(everyone)
    rows = []
    for i, (m, w) in enumerate(zip(members, weights, strict=True)):
        rows.append({"name": m.name, "run_dir": str(m.run.path), "weight": w, "ranked_value": m.ranked_value,
                     "val": val_scores[i], "test": scores(test[i], y_test, task, scale)})
    result = EnsembleResult(
        source="", out_dir=str(out), method=method, task=task, ranked_by=chosen.ranked_by, members=rows,
        test=scores(test_out, y_test, task, scale),
        best_single={"name": members[best].name, "test": rows[best]["test"], "val": val_scores[best]},
        difference=paired_difference(test_out, test[best], y_test, task, scale), details=details)
    for k in range(1, len(members) + 1):  # the same method on the top k members (the source's ranking)
        t, v, _, _ = made(everyone[:k])
        result.by_members.append({"k": k, "test": scores(t, y_test, task, scale),
                                  "val": scores(v, validation[1], task, scale)
                                  if v is not None and validation is not None else None})
    if task != "regression":
        result.calibration = {"ensemble": calibration(test_out, y_test), "best_single": calibration(test[best], y_test)}
    _write_members(out, method, members, weights, details)
    return result


def _soup(method: str, members: list[Member], ranks: list[int], splits: Splits
          ) -> tuple[np.ndarray, np.ndarray | None, list[float], dict]:
    """A soup of `members` (`ranks`: their places on validation): its test and val outputs, each member's share of
    the soup, and details (the soup's weights under "_state", which are written, then dropped)."""
    states = [m.run.state for m in members]
    task = splits.task
    assert isinstance(splits, TensorSplits)  # _build refused splits that are not tensors
    net = saved_model(members[0].run.path, splits, members[0].name)

    def outputs_of(state: dict[str, torch.Tensor], x: torch.Tensor) -> np.ndarray:
        net.load_state_dict(state)
        return _outputs(net, x, task)

    if method == "uniform-soup" or splits.val is None:
        chosen = list(range(len(members)))
    else:
        x_val, y_val = splits.val[0], splits.val[1].numpy()
        sign = 1.0 if task != "regression" else -1.0
        metric = "accuracy" if task != "regression" else "mse"
        order = sorted(range(len(members)), key=lambda i: ranks[i])
        chosen = greedy_soup(states, order, lambda s: sign * scores(outputs_of(s, x_val), y_val, task)[metric])
    state = average([states[i] for i in chosen])
    test_out = outputs_of(state, splits.test[0])
    val_out = outputs_of(state, splits.val[0]) if splits.val is not None else None
    weights = [1.0 / len(chosen) if i in chosen else 0.0 for i in range(len(members))]
    return test_out, val_out, weights, {"ingredients": [members[i].name for i in chosen], "_state": state}


def _write_members(out: Path, method: str, members: list[Member], weights: list[float], details: dict) -> None:
    """Each member with a weight: its config.toml, model.safetensors and metrics.json under members/NAME/; a soup:
    its one model as a run folder (config.toml, model.safetensors) at the top."""
    from safetensors.torch import save_file

    if method in SOUPS:
        state = details.pop("_state")
        with atomic_write(out / "model.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
        shutil.copyfile(members[0].run.path / "config.toml", out / "config.toml")
        return
    for m, w in zip(members, weights, strict=True):
        if w == 0:
            continue
        folder = out / "members" / m.name.replace("/", "-")
        folder.mkdir(parents=True)
        for name in ("config.toml", "model.safetensors", "metrics.json"):
            if (m.run.path / name).is_file():
                shutil.copyfile(m.run.path / name, folder / name)


def _write_manifest(out: Path, result: EnsembleResult, chosen: Selection, splits: Splits) -> None:
    for row in result.members:
        name = row["name"].replace("/", "-")
        row["folder"] = f"members/{name}" if (out / "members" / name).is_dir() else None
    manifest = {"dltune": "ensemble", "method": result.method, "study": chosen.study, "kind": chosen.kind,
                "data": splits.info, "members": [m for m in result.members if m["folder"]] or result.members,
                "evaluation": result.to_dict()}
    if result.method in SOUPS:  # a run folder too: what predict and compress read
        write_text(out / "metrics.json", json.dumps({"status": "completed", "test": result.test, "data": splits.info,
                                                     "ensemble": result.method}, indent=2) + "\n")
    write_text(out / MARK, json.dumps(manifest, indent=2) + "\n")
