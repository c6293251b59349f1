"""The [compress] section of an experiment file (dltune compress): its methods and each one's settings."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from dltune.experiment.fields import PositiveInt, Ratio, Section

__all__ = ["CompressConfig", "DistillConfig", "Int8Config", "MagnitudeConfig", "PruneConfig"]


class PruneConfig(Section):
    """Structured pruning (torch-pruning): whole hidden units and channels go, and the model is rebuilt dense."""

    ratio: Ratio = 0.5  # share of the units / channels of every prunable layer removed
    linear: Ratio | None = None  # per layer kind, instead of ratio: hidden units of nn.Linear layers
    conv: Ratio | None = None  # per layer kind: output channels of convolutions
    scope: Literal["uniform", "global"] = "uniform"  # global: one ranking across layers (layers keep unequal shares)
    steps: PositiveInt = 1  # iterative pruning: the ratio reached in this many steps, fine-tuning after each
    finetune_epochs: Annotated[int, Field(ge=0)] = 1  # per step, with the run's training settings
    finetune: dict[str, Any] = Field(default_factory=dict)  # overrides for fine-tuning: {"optim.lr" = 1e-4}


class MagnitudeConfig(Section):
    """Unstructured pruning: the smallest weights of the Linear and conv layers set to zero (global ranking)."""

    ratio: Ratio = 0.5
    finetune_epochs: Annotated[int, Field(ge=0)] = 0  # zeros kept while fine-tuning


class Int8Config(Section):
    """int8 with onnxruntime: dynamic (weights int8, activations quantized per batch) or static (QDQ, calibrated)."""

    mode: Literal["auto", "dynamic", "static"] = "auto"  # auto: measure both on a model with convs, keep the faster
    calibration_batches: PositiveInt = 8  # static: batches of the training split that set activation ranges
    calibration_size: PositiveInt = 100  # static: examples per calibration batch


class DistillConfig(Section):
    """A smaller student trained to match the run's model (the teacher): loss.distill_from set to the run."""

    student: dict[str, Any] = Field(default_factory=dict)  # a [model] section: {name = "mlp", hidden = [64]}
    temperature: Annotated[float, Field(gt=0.0)] = 4.0
    alpha: Annotated[float, Field(ge=0.0, le=1.0)] = 0.9
    epochs: PositiveInt | None = None  # default: the run's train.epochs
    train: dict[str, Any] = Field(default_factory=dict)  # other overrides for the student: {"optim.lr" = 3e-3}


class CompressConfig(Section):
    """dltune compress: each method, or chain of methods joined by "+", gives one compressed model."""

    methods: tuple[str, ...] = Field(("onnx", "int8", "prune", "prune+int8"), strict=False, min_length=1)
    seeds: PositiveInt = 1  # methods that train (prune, magnitude with fine-tuning, distill): seeds train.seed, +1, ...
    rounds: PositiveInt = 15  # latency: timed calls per model and batch size, interleaved across models
    batch_sizes: tuple[PositiveInt, ...] = Field((1, 1000), strict=False, min_length=1)  # latency at these sizes
    threads: PositiveInt = 1  # latency: intra-op threads of torch and onnxruntime
    tolerance: Annotated[float, Field(gt=0.0)] = 1e-4  # onnx: largest |ONNX - torch| output allowed, per logit
    prune: PruneConfig = PruneConfig()
    magnitude: MagnitudeConfig = MagnitudeConfig()
    int8: Int8Config = Int8Config()
    distill: DistillConfig = DistillConfig()
