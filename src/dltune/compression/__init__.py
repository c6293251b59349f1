"""dltune compress: structured and magnitude pruning, ONNX export, int8 with onnxruntime, and distillation, each
measured beside the original (size, parameters, latency, test metric)."""

from dltune.compression.run import CompressResult, Row, compress, parse_methods, search_values

__all__ = ["CompressResult", "Row", "compress", "parse_methods", "search_values"]
