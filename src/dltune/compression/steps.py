"""The steps of a compression chain, each on a torch model: prune, magnitude, distill, and the ONNX ones (export
checked against torch; int8), and the writing of a compressed model's files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from dltune.compression.measure import latencies
from dltune.compression.onnx_io import export_onnx, max_difference, quantize, session
from dltune.compression.prune import magnitude_prune, structured_prune, write_sparse
from dltune.errors import ConfigError
from dltune.experiment.config import ExperimentConfig, override
from dltune.experiment.sections import CompressConfig
from dltune.files import atomic_write
from dltune.models import count_parameters
from dltune.run.assembly import Splits

if TYPE_CHECKING:
    from dltune.epochs import EpochRecord
    from dltune.run.loop import OnEpoch

__all__ = ["Trained", "distill", "export_checked", "int8", "magnitude", "onnx_runner", "prune", "tensors",
           "write_model"]

# a step's training, epoch by epoch: (what trains, e.g. "fine-tuning", epoch, of epochs, the epoch's record)
Trained = Callable[[str, int, int, "EpochRecord"], None]


def tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack([torch.as_tensor(x) for x in xs]).float(), torch.as_tensor(np.array(ys))


def onnx_runner(sess) -> Callable[[torch.Tensor], Any]:
    return lambda xb: sess.run(None, {"x": xb.numpy()})


def _fine_tune(model: nn.Module, experiment: ExperimentConfig, splits: Splits, seed: int, epochs: int,
               overrides: dict[str, Any], key: str, on_epoch: Trained | None, what: str = "fine-tuning") -> nn.Module:
    """`model` trained `epochs` more epochs with the run's own settings (and `overrides`): a copy, back on the CPU."""
    from dltune.tuner.auto import train

    try:
        settings = override(experiment, {"train.epochs": epochs, "train.seed": seed, "train.auto": [],
                                         "tracking.mlflow": False, "tracking.tensorboard": None, **overrides})
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from None
    result = train(settings, data=splits, model=model, on_epoch=_told(on_epoch, what, epochs))
    if result.status == "diverged":
        raise ConfigError(f"{key}: fine-tuning diverged ({result.divergence}); lower its optim.lr")
    assert result.model is not None  # a run just trained holds its model
    return result.model.cpu().eval()


def _told(on_epoch: Trained | None, what: str, epochs: int) -> OnEpoch | None:
    """train's on_epoch hook that tells `on_epoch` each epoch of `what`."""
    if on_epoch is None:
        return None
    return lambda epoch, record: on_epoch(what, epoch, epochs, record)


def prune(model, example, experiment, splits, seed, details, on_epoch: Trained | None = None) -> nn.Module:
    cfg = experiment.compress.prune
    before = count_parameters(model)
    steps: list[dict[str, Any]] = []  # per step: the parameters left, and the fine-tuning epochs after it

    def finetune(m: nn.Module, step: int) -> None:
        done = {"step": step, "parameters": count_parameters(m)}
        if cfg.finetune_epochs:
            what = "fine-tuning" if cfg.steps == 1 else f"fine-tuning after step {step} of {cfg.steps}"
            tuned = _fine_tune(m, experiment, splits, seed, cfg.finetune_epochs, cfg.finetune,
                               "compress.prune.finetune", on_epoch, what)
            m.load_state_dict(tuned.state_dict())
            done["finetune_epochs"] = cfg.finetune_epochs
        steps.append(done)

    model = structured_prune(model, example, cfg, finetune)
    details["prune"] = {"parameters_before": before, "parameters_after": count_parameters(model), "steps": steps,
                        "shapes": {n: list(p.shape) for n, p in model.state_dict().items() if n.endswith("weight")}}
    return model


def magnitude(model, example, experiment, splits, seed, details, on_epoch: Trained | None = None) -> nn.Module:
    cfg = experiment.compress.magnitude
    masks = magnitude_prune(model, cfg, example)
    if cfg.finetune_epochs:
        params = dict(model.named_parameters())
        for name, mask in masks.items():  # a fresh optimizer's steps on zero gradients leave zeros at zero
            params[name].register_hook(lambda g, mask=mask: g * mask)
        model = _fine_tune(model, experiment, splits, seed, cfg.finetune_epochs, {}, "compress.magnitude", on_epoch)
        named = dict(model.named_parameters())
        with torch.no_grad():
            for name, mask in masks.items():
                named[name].mul_(mask)
    zeros = sum(int((p == 0).sum()) for p in model.parameters())
    details["magnitude"] = {"zeros": zeros, "parameters": count_parameters(model)}
    details["parameters"] = count_parameters(model) - zeros
    return model


def distill(source, experiment, splits, seed, details, on_epoch: Trained | None = None) -> nn.Module:
    from dltune.tuner.auto import train

    cfg = experiment.compress.distill
    settings = {**{f"model.{k}": v for k, v in cfg.student.items()}, "loss.distill_from": str(source),
                "loss.distill_temperature": cfg.temperature, "loss.distill_alpha": cfg.alpha, "train.seed": seed,
                "train.epochs": cfg.epochs or experiment.train.epochs, "train.auto": [], "tracking.mlflow": False,
                "tracking.tensorboard": None, **cfg.train}
    try:
        student_config = override(experiment.model_copy(update={"model": type(experiment.model)()}), settings)
    except ConfigError as e:
        raise ConfigError(f"compress.distill: {e}") from None
    result = train(student_config, data=splits, on_epoch=_told(on_epoch, "the student", student_config.train.epochs))
    details["distill"] = {"student": dict(cfg.student), "temperature": cfg.temperature, "alpha": cfg.alpha,
                          "epochs": student_config.train.epochs}
    details["_config"] = {"model": student_config.model.model_dump(), "loss.distill_from": None}
    assert result.model is not None  # a run just trained holds its model
    return result.model.cpu().eval()


def export_checked(model, example, x_test, path: Path, cfg: CompressConfig, details) -> None:
    export_onnx(model, example, path, "compress.methods")
    difference = max_difference(model, session(path, cfg.threads), x_test[:256].float())
    details["onnx_max_difference"] = difference
    if not difference <= cfg.tolerance:
        raise ConfigError(f"compress.tolerance: the ONNX model's outputs differ from torch's by {difference:.3g} "
                          f"(> {cfg.tolerance:g}) on the test split's first 256 examples")


def int8(model, example, x_test, splits, folder: Path, cfg: CompressConfig, details) -> None:
    fp32 = folder / "fp32.onnx"
    export_checked(model, example, x_test, fp32, cfg, details)
    convs = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    modes = [cfg.int8.mode] if cfg.int8.mode != "auto" else (["dynamic", "static"] if convs else ["dynamic"])
    x_train = splits.train[0] if isinstance(splits.train, tuple) else tensors(splits.train)[0]
    candidates = {}
    for mode in modes:
        target = folder / f"int8-{mode}.onnx"
        batches = (x_train[i * cfg.int8.calibration_size:(i + 1) * cfg.int8.calibration_size].float().cpu().numpy()
                   for i in range(cfg.int8.calibration_batches))
        quantize(fp32, target, mode, batches)
        candidates[mode] = target
    if len(candidates) > 1:  # keep the faster at the largest batch size measured
        timed = latencies({m: onnx_runner(session(p, cfg.threads)) for m, p in candidates.items()}, x_test.float(),
                          (max(cfg.batch_sizes),), max(3, cfg.rounds // 3), cfg.threads)
        chosen = min(timed, key=lambda m: timed[m][str(max(cfg.batch_sizes))]["median_ms"])
        details["int8_choice"] = {m: t[str(max(cfg.batch_sizes))]["median_ms"] for m, t in timed.items()}
    else:
        chosen = next(iter(candidates))
    details["int8_mode"] = chosen
    candidates[chosen].replace(folder / "model.onnx")
    for path in [fp32, *candidates.values()]:
        path.unlink(missing_ok=True)


def write_model(model, folder: Path, torch_runs: bool, example, x_test, cfg, details, chain) -> int:
    """model.safetensors where torch runs the model, model.onnx always; the deployed file's size in bytes."""
    if not torch_runs:
        return (folder / "model.onnx").stat().st_size
    from safetensors.torch import save_file

    with atomic_write(folder / "model.safetensors") as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
    export_checked(model, example, x_test, folder / "model.onnx", cfg, details)
    if "magnitude" in chain:  # honest size: only a sparse file is smaller
        with atomic_write(folder / "model.sparse.safetensors") as tmp:
            write_sparse(model, tmp)
        return (folder / "model.sparse.safetensors").stat().st_size
    return (folder / "model.safetensors").stat().st_size

