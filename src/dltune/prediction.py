"""dltune predict: a trained model's predictions on new examples, from a run folder, an ensemble's folder or a
compressed model's ONNX file.

Inputs are read from .npz (the array "x", or the only array), .csv (one example per row, numbers only, an optional
header) or an IDX file (MNIST's format, gzip or raw), in the units of the data the model was trained on (MNIST:
pixels 0-255), and normalized as training normalized them, with the statistics the run recorded. The output holds
each example's class and class probabilities (a regression: its predicted value, in the targets' units), as CSV
or NPZ.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dltune.errors import ConfigError, DataError
from dltune.files import atomic_write, claim_file
from dltune.imports import need_extra

__all__ = ["Prediction", "predict", "read_inputs"]


@dataclass
class Prediction:
    """What `predict` gave: per example a class index with its probabilities, or a value (regression)."""

    model_dir: str
    kind: str  # run | ensemble | onnx
    input: str
    output: str | None
    task: str
    classes: list[str] | None
    labels: np.ndarray | None = None  # class indices
    probabilities: np.ndarray | None = None  # (examples, classes)
    values: np.ndarray | None = None  # regression, in the targets' units
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_dir": self.model_dir, "kind": self.kind, "input": self.input,
                               "output": self.output, "task": self.task, "examples": self.examples,
                               "classes": self.classes, "notes": self.notes}
        if self.values is not None:
            out["predictions"] = [float(v) for v in self.values]
        else:
            assert self.labels is not None and self.probabilities is not None
            out["labels"] = [self._name(i) for i in self.labels]
            out["probabilities"] = np.round(self.probabilities, 6).tolist()
        return out

    @property
    def examples(self) -> int:
        return len(self.values if self.values is not None else self.labels)  # type: ignore[arg-type]

    def _name(self, index: int) -> str:
        return self.classes[index] if self.classes else str(index)


def predict(model_dir: str | Path, input: str | Path, output: str | Path | None = None) -> Prediction:
    """Predict the examples of the file `input` with the model saved in `model_dir` (a run folder, a trial's
    folder, a search's best/, an ensemble's folder, or a folder of `dltune compress` with model.onnx), and write
    them to `output` (.csv or .npz; default: INPUT-predictions.csv in the current folder, -2, ... when taken; a
    given file that exists is refused)."""
    folder = Path(model_dir)
    out_path = Path(output) if output is not None else None
    if out_path is not None:
        if out_path.suffix not in (".csv", ".npz"):
            raise ConfigError(f"--output {out_path}: write .csv or .npz")
        if out_path.exists():
            raise ConfigError(f"--output {out_path}: exists; nothing was written (choose another file)")
    kind, info, threshold = _describe(folder)
    if kind == "onnx":
        need_extra("compress", "onnxruntime", who=f"MODEL_DIR {folder}: onnxruntime, which runs its model.onnx,")
    x = _normalized(read_inputs(input), info, Path(input))
    outputs = _run(kind, folder, x, info)
    finite = torch.isfinite(outputs.reshape(len(outputs), -1)).all(dim=1)
    if not finite.all():
        bad = (~finite).nonzero().flatten().tolist()
        raise DataError(f"--input {input}: the model's output for example {bad[0] + 1} "
                        f"{f'(and {len(bad) - 1} more) ' if len(bad) > 1 else ''}is not finite: its values overflow "
                        f"the model (the largest |value| there is {float(x[bad[0]].abs().max()):.3g} after "
                        "normalization)")
    task = info["task"]
    result = Prediction(str(folder), kind, str(input), None, task, info.get("classes"))
    if info.get("normalization", {}).get("method", "").startswith("none ("):
        result.notes.append("the model trained on a Dataset of your own: inputs are used as given (its transform "
                            "is not applied)")
    if task == "regression":
        scale = info.get("target_scale") or {"mean": 0.0, "std": 1.0}
        result.values = outputs.reshape(len(outputs)).double().numpy() * scale["std"] + scale["mean"]
    else:
        from dltune.ensembles.model import probabilities

        p = probabilities(outputs, task).double().numpy()
        result.probabilities = p
        result.labels = (p[:, 1] >= threshold).astype(np.int64) if threshold is not None else p.argmax(axis=1)
        if threshold is not None:
            result.notes.append(f"binary labels use the run's decision threshold {threshold:.4g}")
    target = out_path if out_path is not None else claim_file(Path(f"{Path(input).name.split('.')[0]}-predictions.csv"))
    try:
        _write(result, target)
    except BaseException:
        if out_path is None:
            target.unlink(missing_ok=True)
        raise
    result.output = str(target)
    return result


def read_inputs(path: str | Path) -> np.ndarray:
    """The examples of an .npz, .csv or IDX file as an array (examples, ...)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--input {path}: no such file")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            name = "x" if "x" in names else names[0] if len(names) == 1 else None
            if name is None:
                raise DataError(f"--input {path}: holds arrays {', '.join(names) or '(none)'}; name the examples 'x'")
            return _finite(archive[name], f"--input {path}: the array {name!r}")
    if path.suffix == ".csv":
        return _read_csv(path)
    head = path.read_bytes()[:4]
    if head[:2] == b"\x1f\x8b" or (len(head) == 4 and head[:2] == b"\0\0"):
        from dltune.data.idx import read_idx

        return _finite(read_idx(path), f"--input {path}: its data")
    raise DataError(f"--input {path}: not .npz, .csv or an IDX file (MNIST's format, gzip or raw)")


def _finite(x: np.ndarray, what: str) -> np.ndarray:
    """`x` if every value is a finite number: a NaN or an infinity would be predicted as class 0 with NaN
    probabilities."""
    if x.dtype.kind not in "fc":
        return x
    bad = ~np.isfinite(x)
    if bad.any():
        first = np.argwhere(bad)[0]
        kinds = ", ".join(sorted({"nan" if np.isnan(v) else "inf" for v in x[bad].ravel()[:1000]}))
        count = int(bad.sum())
        at = f"; the first in example {first[0] + 1}" + (f", at {tuple(int(i) for i in first[1:])}"
                                                          if len(first) > 1 else "")
        raise DataError(f"{what} holds {count} value{'' if count == 1 else 's'} that {'is' if count == 1 else 'are'} "
                        f"not finite ({kinds}){at}; predictions need finite numbers")
    return x


def _read_csv(path: Path) -> np.ndarray:
    rows = list(csv.reader(io.StringIO(path.read_text())))
    rows = [r for r in rows if r]
    if rows and not _numeric(rows[0]):
        rows = rows[1:]  # a header
    for i, row in enumerate(rows):
        if not _numeric(row):
            raise DataError(f"--input {path}: row {i + 1} holds something other than numbers: {','.join(row)[:80]}")
        bad = next((j for j, v in enumerate(row) if not math.isfinite(float(v))), None)
        if bad is not None:
            raise DataError(f"--input {path}: row {i + 1} holds a value that is not finite ({row[bad].strip()}, in "
                            f"column {bad + 1}); predictions need finite numbers")
    if not rows or len({len(r) for r in rows}) != 1:
        raise DataError(f"--input {path}: " + ("no examples" if not rows else "rows of different lengths"))
    return np.array(rows, dtype=np.float64)


def _numeric(row: list[str]) -> bool:
    try:
        [float(v) for v in row]
    except ValueError:
        return False
    return True


def _describe(folder: Path) -> tuple[str, dict[str, Any], float | None]:
    """What the folder holds (run, ensemble, onnx), the data its model trained on, and a binary run's threshold."""
    if not folder.is_dir():
        raise ConfigError(f"MODEL_DIR {folder}: not a folder")
    metrics = _json(folder / "metrics.json")
    if (folder / "ensemble.json").is_file():
        manifest = _json(folder / "ensemble.json")
        return "ensemble", manifest.get("data") or {}, None
    onnx = (folder / "model.onnx").is_file() and (metrics.get("runtime") == "onnxruntime"
                                                  or not (folder / "model.safetensors").is_file())
    info = metrics.get("data")
    if info is None and metrics.get("source"):  # a folder of dltune compress: the data of the run it came from
        info = _json(Path(metrics["source"]) / "metrics.json").get("data")
    if onnx or (folder / "model.safetensors").is_file():
        if not info:
            info = _data_of(folder)
        return ("onnx" if onnx else "run"), info, metrics.get("threshold")
    inside = sorted(p.name for p in folder.iterdir() if p.is_dir() and any(
        (p / name).is_file() for name in ("model.safetensors", "model.onnx", "ensemble.json")))
    if inside and (folder / "compress.json").is_file():  # the output of dltune compress: a model per method
        chosen = "int8" if "int8" in inside else inside[0]
        raise ConfigError(f"MODEL_DIR {folder}: holds the models of dltune compress, one per folder; predict with one "
                          f"of them, e.g. {folder / chosen} (its models: {', '.join(inside)})")
    if inside:
        raise ConfigError(f"MODEL_DIR {folder}: holds no model itself; these folders in it do: {', '.join(inside)}")
    raise ConfigError(f"MODEL_DIR {folder}: holds no model (model.safetensors, model.onnx or ensemble.json); give a "
                      "run folder, an ensemble's folder or a folder of dltune compress")


def _data_of(folder: Path) -> dict[str, Any]:
    """The data record of a folder whose metrics.json has none (a search's best/ of an earlier version): the data
    its config.toml names, loaded and split again (the split and its statistics are seeded, so they are the same)."""
    if not (folder / "config.toml").is_file():
        raise ConfigError(f"MODEL_DIR {folder}: no record of the data its model trained on (metrics.json 'data', "
                          "or config.toml)")
    from dltune.experiment.config import load_config
    from dltune.run.assembly import splits_for

    return splits_for(load_config(folder / "config.toml")).info


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _normalized(x: np.ndarray, info: dict[str, Any], path: Path) -> torch.Tensor:
    """`x` shaped as one example of the training data, scaled and normalized with the training split's statistics."""
    shape = tuple(int(d) for d in info["input_shape"])
    size = math.prod(shape)
    if x.ndim == len(shape) and x.shape == shape:
        x = x[None]  # one example
    if x.ndim < 2 or math.prod(x.shape[1:]) != size:
        raise DataError(f"--input {path}: examples of shape {tuple(x.shape[1:])} ({math.prod(x.shape[1:])} values "
                        f"each), where the model expects {shape} ({size} values each)")
    x = x.reshape(len(x), *shape)
    large = np.abs(x.reshape(len(x), -1)).max(axis=1) > np.finfo(np.float32).max
    if large.any():
        first = int(np.argmax(large))
        raise DataError(f"--input {path}: example {first + 1} holds a value beyond float32's range, which the model "
                        f"computes in (its largest |value| is {float(np.abs(x[first]).max()):.3g})")
    x = x.astype(np.float32)
    norm = info.get("normalization") or {}
    x = x * np.float32(norm.get("scale", 1.0))
    if norm.get("method") == "standard":
        mean, std = (np.asarray(norm[k], dtype=np.float32) for k in ("mean", "std"))
        if mean.size > 1:
            mean, std = mean.reshape(shape), std.reshape(shape)
        x = (x - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x))


def _run(kind: str, folder: Path, x: torch.Tensor, info: dict[str, Any]) -> torch.Tensor:
    if kind == "onnx":
        from dltune.compression.onnx_io import run_onnx, session

        return run_onnx(session(folder / "model.onnx", torch.get_num_threads()), x)
    if kind == "ensemble":
        from dltune.ensembles.model import load_ensemble

        model, _ = load_ensemble(folder)
    else:
        from dltune.run.assembly import recorded_splits, saved_model

        model = saved_model(folder, recorded_splits(info, f"MODEL_DIR {folder}"), "MODEL_DIR")
    with torch.no_grad():
        return torch.cat([model(x[i : i + 1024]) for i in range(0, len(x), 1024)])


def _write(result: Prediction, path: Path) -> None:
    with atomic_write(path) as tmp:
        if path.suffix == ".npz":
            arrays = ({"predictions": result.values} if result.values is not None else
                      {"labels": result.labels, "probabilities": result.probabilities,
                       "classes": np.array(result.classes or [])})
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
            return
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            if result.values is not None:
                writer.writerow(["prediction"])
                writer.writerows([[f"{v:.6g}"] for v in result.values])
                return
            assert result.labels is not None and result.probabilities is not None
            names = result.classes or [str(i) for i in range(result.probabilities.shape[1])]
            writer.writerow(["label", *(f"p_{n}" for n in names)])
            for label, p in zip(result.labels, result.probabilities, strict=True):
                writer.writerow([names[label], *(f"{v:.6f}" for v in p)])
