"""dltune compress: each method or chain of methods of [compress] applied to a run's trained model, written to a folder
of its own, and measured beside the original in one table (size, parameters, latency, test metric)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dltune.compression.measure import Spread, latencies, spread, test_metrics
from dltune.compression.onnx_io import run_onnx, session
from dltune.compression.steps import (
    Trained,
    distill,
    export_checked,
    int8,
    magnitude,
    onnx_runner,
    prune,
    tensors,
    write_model,
)
from dltune.errors import ConfigError
from dltune.experiment.config import ExperimentConfig, load_config, override, to_toml
from dltune.experiment.sections import CompressConfig
from dltune.files import claim_dir, new_output, write_text
from dltune.imports import need_extra
from dltune.models import count_parameters
from dltune.run.assembly import Data, Splits, saved_model, splits_for
from dltune.run.runtime import torch_settings
from dltune.run.saved import read_run

__all__ = ["CompressResult", "Row", "compress", "parse_methods", "require_compress", "search_values"]

LAST = {"onnx", "int8"}  # methods that give an ONNX model: only at the end of a chain
METHODS = ["distill", "magnitude", "prune", *sorted(LAST)]
MARK = "compress.json"  # the file that marks a folder as a compression's output
# dltune's compress extra: every compressed model is exported to ONNX and checked in onnxruntime (steps.write_model),
# prune is torch-pruning's
PACKAGES = ("onnx", "onnxscript", "onnxruntime", "torch_pruning")


@dataclass
class Row:
    """One compressed model (the original first): what it is, where, and what it costs and keeps."""

    method: str
    runtime: str  # torch | onnxruntime
    folders: list[str]
    size_bytes: int
    parameters: int
    metric: Spread  # the test metric over seeds
    per_seed: list[float]
    latency: dict[str, dict[str, float]] = field(default_factory=dict)  # batch size -> median_ms, min_ms, max_ms
    delta: float | None = None  # mean metric - the original's (points for accuracy)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class CompressResult:
    source: str
    out_dir: str
    metric: str  # test.accuracy, or test.r2 for regression
    rows: list[Row]
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "out_dir": self.out_dir, "metric": self.metric, "config": self.config,
                "rows": [asdict(r) for r in self.rows]}


def parse_methods(methods: tuple[str, ...]) -> list[list[str]]:
    """Each entry of compress.methods as its chain of method names; a bad entry names its index."""
    chains = []
    for i, entry in enumerate(methods):
        chain = [m.strip() for m in entry.split("+")]
        where = f"compress.methods[{i}] = {entry!r}"
        for m in chain:
            if m not in METHODS:
                raise ConfigError(f"{where}: unknown method {m!r}; methods: {', '.join(METHODS)}, chained with '+'")
        if len(set(chain)) < len(chain):
            raise ConfigError(f"{where}: a method twice in one chain")
        if any(m in LAST for m in chain[:-1]):
            raise ConfigError(f"{where}: onnx and int8 give an ONNX model, which nothing can follow; put them last")
        chains.append(chain)
    if len({"+".join(c) for c in chains}) < len(chains):
        raise ConfigError("compress.methods: a method or chain listed twice")
    return chains


def require_compress() -> None:
    """The compress extra's packages, or an error that says how to install them."""
    need_extra("compress", *PACKAGES, who="dltune's compress extra (torch-pruning, ONNX and onnxruntime)")


def compress(run_dir: str | Path, out_dir: str | Path | None = None, *, config: str | Path | None = None,
             seeds: int | None = None, methods: list[str] | None = None, data: Data | None = None,
             on_row: Callable[[str], None] | None = None, on_epoch: Trained | None = None) -> CompressResult:
    """Compress the trained model of `run_dir` (a run folder, a trial's folder or a search's best/) by each entry of
    its [compress] section (or that of the experiment file `config`), and measure each against the original.

    `out_dir`: a new or empty folder (default: RUN_DIR-compressed, or -2, -3, ... when taken); a folder that holds
    another compression is refused. Each compressed model gets a folder there with model.onnx, model.safetensors
    where torch runs it, config.toml (which `dltune train`/`compress` read back), metrics.json and row.md.
    `seeds` and `methods` replace compress.seeds and compress.methods; `data` replaces data.name, as for `train`.
    `on_row(line)` is told each method's result and what is measured next; `on_epoch(what, epoch, epochs, record)`
    each epoch of a method that trains ("prune, seed 1: fine-tuning", "distill, seed 2: the student")."""
    saved = read_run(run_dir)
    experiment = saved.config
    if config is not None:  # its [compress], and where its import paths (a student of your own) are found
        given = load_config(config)
        experiment = override(experiment, {"compress": given.compress.model_dump(),
                                           "code.paths": [*experiment.code.paths, *given.code.paths]})
    if seeds is not None:
        experiment = override(experiment, {"compress.seeds": seeds})
    if methods is not None:
        experiment = override(experiment, {"compress.methods": list(methods)})
    cfg = experiment.compress
    chains = parse_methods(cfg.methods)
    if any("distill" in chain for chain in chains) and not cfg.distill.student:
        raise ConfigError("compress.distill.student: distill needs the student's [model] settings, e.g. "
                          "{ name = \"mlp\", hidden = [64] }")
    require_compress()
    # a second compress into the same --out is refused
    with new_output(Path(run_dir).parent / f"{Path(run_dir).name}-compressed", out_dir, MARK, "dltune compress",
                    "compression") as out:
        with torch_settings(experiment):
            splits = splits_for(experiment, data)
            # recorded with every compressed model (metrics.json's source): absolute, so it is found from anywhere
            result = _compress(saved.path.absolute(), experiment, cfg, chains, splits, out, saved.metrics, on_row,
                               on_epoch)
        write_text(out / MARK, json.dumps(result.to_dict(), indent=2) + "\n")
    return result


def _compress(source: Path, experiment: ExperimentConfig, cfg: CompressConfig, chains: list[list[str]],
              splits: Splits, out: Path, record: dict[str, Any], on_row: Callable[[str], None] | None,
              on_epoch: Trained | None) -> CompressResult:
    original = saved_model(source, splits)
    x_test, y_test = (t.cpu() for t in splits.test) if isinstance(splits.test, tuple) else tensors(splits.test)
    example = x_test[:2].float()
    task, scale = splits.task, splits.target_scale
    name = "r2" if task == "regression" else "accuracy"
    threshold = record.get("threshold")

    def score(outputs: torch.Tensor) -> float:
        return test_metrics(outputs, y_test, task, scale, threshold)[name]

    with torch.no_grad():
        base = score(_torch_outputs(original, x_test))
    rows = [Row("original", "torch", [str(source)], (source / "model.safetensors").stat().st_size,
                count_parameters(original), spread([base]), [base])]
    runners: dict[str, Callable[[torch.Tensor], Any]] = {"original": _torch_runner(original)}
    for chain in chains:
        label = "+".join(chain)
        trains = any(m == "distill" or (m == "prune" and cfg.prune.finetune_epochs)
                     or (m == "magnitude" and cfg.magnitude.finetune_epochs) for m in chain)  # seeds matter
        row: Row | None = None
        for k in range(cfg.seeds if trains else 1):
            seed = experiment.train.seed + k
            folder = claim_dir(out / (label if not trains or cfg.seeds == 1 else f"{label}-seed{seed}"))
            told = None if on_epoch is None else \
                lambda what, e, n, r, named=f"{label}, seed {seed}": on_epoch(f"{named}: {what}", e, n, r)
            model, onnx_file, details, size = _build(chain, original, source, experiment, splits, seed, folder,
                                                     example, x_test, told)
            outputs, runner = _deployed(model, onnx_file, cfg.threads)
            value = score(outputs(x_test))
            config_out = override(experiment, {"train.seed": seed, **details.pop("_config", {})})
            write_text(folder / "config.toml", to_toml(config_out))
            if row is None:  # its metric is the first seed's until every seed is in (below)
                row = Row(label, "onnxruntime" if onnx_file else "torch", [], size,
                          details.get("parameters", count_parameters(model)), spread([value]), [], details=details)
                runners[label] = runner
            row.folders.append(str(folder))
            row.per_seed.append(value)
            write_text(folder / "metrics.json", json.dumps(
                {"method": label, "seed": seed, "source": str(source), "test": {name: value}, "size_bytes": size,
                 "runtime": row.runtime, "details": details, "data": splits.info}, indent=2) + "\n")
        assert row is not None
        row.metric = spread(row.per_seed)
        rows.append(row)
        if on_row is not None:
            on_row(f"{label}: test.{name} {row.metric['mean']:.4g}, {row.size_bytes:,} bytes")
    if on_row is not None:
        on_row(f"timing {len(runners)} models at batch sizes {', '.join(map(str, cfg.batch_sizes))}, {cfg.rounds} "
               f"rounds each, on {cfg.threads} thread{'' if cfg.threads == 1 else 's'}")
    timed = latencies(runners, x_test.float(), cfg.batch_sizes, cfg.rounds, cfg.threads)
    points = 100 if name == "accuracy" else 1
    for row in rows:
        row.latency = timed[row.method]
        row.delta = None if row.method == "original" else points * (row.metric["mean"] - base)
    result = CompressResult(str(source), str(out), f"test.{name}", rows, cfg.model_dump(mode="json"))
    for row in rows[1:]:
        for written in row.folders:
            write_text(Path(written) / "row.md", _row_md(result, row))
    return result


def _build(chain: list[str], original: nn.Module, source: Path, experiment: ExperimentConfig, splits: Splits,
           seed: int, folder: Path, example: torch.Tensor, x_test: torch.Tensor, on_epoch: Trained | None = None
           ) -> tuple[nn.Module, Path | None, dict[str, Any], int]:
    """One chain applied to a copy of `original` in `folder`: the torch model (the last before export), the ONNX
    file when the chain ends in onnx or int8 (else None), what each step did, and the deployed file's bytes."""
    cfg = experiment.compress
    model = copy.deepcopy(original)
    details: dict[str, Any] = {}
    onnx_file = None
    for method in chain:
        if method == "prune":
            model = prune(model, example, experiment, splits, seed, details, on_epoch)
        elif method == "magnitude":
            model = magnitude(model, example, experiment, splits, seed, details, on_epoch)
        elif method == "distill":
            model = distill(source, experiment, splits, seed, details, on_epoch)
        elif method == "onnx":
            onnx_file = folder / "model.onnx"
            export_checked(model, example, x_test, onnx_file, cfg, details)
        else:
            onnx_file = folder / "model.onnx"
            int8(model, example, x_test, splits, folder, cfg, details)
    size = write_model(model, folder, onnx_file is None, example, x_test, cfg, details, chain)
    return model, onnx_file, details, size


def search_values(run_dir: str | Path, model: nn.Module, experiment: ExperimentConfig, splits: Splits
                  ) -> dict[str, float]:
    """A search trial's compressed.* objectives: compress.methods' first entry applied to the trial's model (run
    folder `run_dir`, which a distillation takes as the teacher), into run_dir/compressed.

    compressed.accuracy is the compressed model's accuracy on the validation split, the split a search chooses
    by (its test accuracy is returned too, as compressed.test_accuracy, to record); compressed.latency_ms its
    median latency per call at the largest of compress.batch_sizes; compressed.size_bytes its deployed file."""
    cfg = experiment.compress
    chain = parse_methods(cfg.methods)[0]
    if "distill" in chain and not cfg.distill.student:
        raise ConfigError("compress.distill.student: distill needs the student's [model] settings")
    folder = claim_dir(Path(run_dir) / "compressed")
    x_test, y_test = (t.cpu() for t in splits.test) if isinstance(splits.test, tuple) else tensors(splits.test)
    part = splits.val if splits.val is not None else splits.test
    x_val, y_val = (t.cpu() for t in part) if isinstance(part, tuple) else tensors(part)
    original = model.cpu().eval()
    made, onnx_file, details, size = _build(chain, original, Path(run_dir), experiment, splits,
                                            experiment.train.seed, folder, x_test[:2].float(), x_test)
    outputs, runner = _deployed(made, onnx_file, cfg.threads)

    def accuracy(x: torch.Tensor, y: torch.Tensor) -> float:
        return test_metrics(outputs(x), y, splits.task, splits.target_scale, None)["accuracy"]

    big = max(cfg.batch_sizes)
    timed = latencies({"model": runner}, x_test.float(), (big,), cfg.rounds, cfg.threads)["model"][str(big)]
    values = {"compressed.accuracy": accuracy(x_val, y_val), "compressed.test_accuracy": accuracy(x_test, y_test),
              "compressed.latency_ms": timed["median_ms"], "compressed.size_bytes": float(size)}
    write_text(folder / "metrics.json", json.dumps({"method": "+".join(chain), **values, "details": details},
                                                  indent=2) + "\n")
    return values


def _deployed(model: nn.Module, onnx_file: Path | None, threads: int
              ) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], Any]]:
    """How a compressed model runs as deployed (its ONNX file in one onnxruntime session, else torch): its outputs
    on a whole split, and a runner of one batch for the latency."""
    if onnx_file is None:
        return lambda x: _torch_outputs(model, x), _torch_runner(model)
    sess = session(onnx_file, threads)
    return lambda x: run_onnx(sess, x.float()), onnx_runner(sess)


def _torch_outputs(model: nn.Module, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch].float()) for i in range(0, len(x), batch)])


def _torch_runner(model: nn.Module) -> Callable[[torch.Tensor], Any]:
    model = model.cpu().eval()
    return lambda xb: model(xb)


def _row_md(result: CompressResult, row: Row) -> str:
    big = max(row.latency, key=int) if row.latency else None
    latency = f"{row.latency[big]['median_ms']:.3f} ms at batch {big}" if big else ""
    return (f"| method | runtime | bytes | parameters | {result.metric} | Δ | latency |\n"
            "|---|---|---|---|---|---|---|\n"
            f"| {row.method} | {row.runtime} | {row.size_bytes:,} | {row.parameters:,} | {row.metric['mean']:.4f} | "
            f"{row.delta:+.2f} | {latency} |\n")
