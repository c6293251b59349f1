"""ONNX export (torch's dynamo exporter), its check against torch, and int8 with onnxruntime's quantizers.

int8 ops, chosen by measurement (benchmarks/bench_compress.py; README, "Compress"): dynamic quantization of
MatMul/Gemm only (weights int8, activations quantized per batch), since onnxruntime's dynamic ConvInteger ran slower
than fp32 convolutions; and static QDQ quantization of every op, with activation ranges calibrated on batches of the
training split, which quantizes convolutions too. With int8.mode = "auto", a model with convolutions gets both and
keeps the faster at the largest measured batch; a model without gets the dynamic one.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dltune.errors import ConfigError
from dltune.files import atomic_write
from dltune.run.runtime import quiet_logger

__all__ = ["export_onnx", "max_difference", "quantize", "run_onnx", "session"]


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, key: str) -> None:
    """`model` (eval mode, CPU) as one ONNX file at `path`: input "x", output "logits", any batch size."""
    model = model.cpu().eval()
    batch = torch.export.Dim("batch", min=1)
    with quiet_logger("torch.onnx"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(model, (example[:2].cpu(),), input_names=["x"], output_names=["logits"],
                                        dynamic_shapes=({0: batch},), dynamo=True, verbose=False)
        except Exception as e:
            raise ConfigError(f"{key}: torch.onnx.export cannot export this model: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from None
    assert program is not None  # dynamo=True returns an ONNXProgram (only the old exporter returns None)
    with atomic_write(path) as tmp:
        program.save(str(tmp), external_data=False)


def session(path: Path, threads: int):
    """An onnxruntime CPU session on `threads` intra-op threads, one inter-op thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(sess, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """The session's outputs on `x`, in batches."""
    outs = [sess.run(None, {"x": x[i : i + batch].numpy()})[0] for i in range(0, len(x), batch)]
    return torch.from_numpy(np.concatenate(outs))


def max_difference(model: nn.Module, sess, x: torch.Tensor) -> float:
    """The largest |ONNX - torch| over the outputs on `x`."""
    with torch.no_grad():
        expected = model.cpu().eval()(x)
    return float((run_onnx(sess, x) - expected).abs().max())


def quantize(source: Path, target: Path, mode: str, calibration: Iterator[np.ndarray] | None = None) -> None:
    """int8 of the fp32 ONNX model at `source`: "dynamic" (MatMul and Gemm) or "static" (QDQ, every op,
    activations calibrated on the batches of `calibration`)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = target.with_name(target.stem + ".pre.onnx")
    with quiet_logger(None):  # the quantizer warns on the root logger
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            with atomic_write(target) as tmp:
                if mode == "dynamic":
                    quantize_dynamic(str(prepared), str(tmp), op_types_to_quantize=["MatMul", "Gemm"],
                                     weight_type=QuantType.QInt8)
                else:
                    class Reader(CalibrationDataReader):
                        def __init__(self) -> None:
                            self.batches = iter(calibration or [])

                        def get_next(self) -> dict[str, np.ndarray] | None:
                            batch = next(self.batches, None)
                            return None if batch is None else {"x": batch}

                    quantize_static(str(prepared), str(tmp), Reader(), quant_format=QuantFormat.QDQ,
                                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
        finally:
            prepared.unlink(missing_ok=True)
