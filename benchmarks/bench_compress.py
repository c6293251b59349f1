"""dltune compress on the reference MLP and the built-in CNN (mnist-5k, 1 thread): what each method saves in size and
latency, and what it costs in test accuracy, all measured in one run.

What is measured:

* The reference MLP (examples/seed_mnist.toml: 784-500-10, Adam, 10 epochs) is trained, then `dltune.compress` runs
  int8 (dynamic, MatMul/Gemm), prune (50% of the hidden units, torch-pruning, 1 fine-tuning epoch) and prune+int8,
  with --seeds N for the methods that train. Latency: every model in turns within a round (interleaved), batch 1 and
  batch 1000, 1 intra-op thread, medians over --rounds rounds; speedups are against the original in torch eager.
* The built-in CNN (channels 32, 64; head 128; 3 epochs) is trained, then compressed to fp32 ONNX and int8 (dynamic
  and static measured, the faster kept): cnn_onnx_speedup_b1000 is onnxruntime fp32 against torch eager.
* Limits beside the targets the models miss, measured in the same run:
  - int8_speedup_b1000_limit: torch eager's time at batch 1000 over onnxruntime's time for the int8 model's matrix
    products alone (one MatMulInteger per layer, uint8 activations and int8 weights as dynamic quantization makes them, with no
    quantizing, scaling or bias between them);
  - pruned_speedup_b1000_limit: the same at the pruned shapes in torch eager, that is the parameter ratio, which
    bounds what removing units saves (the matrix products scale with it).
  - The accuracy drops carry their standard error over seeds (the original is one model, so only the compressed
    side varies).

Run:  .venv/bin/python benchmarks/bench_compress.py [--json] [--seeds 3] [--rounds 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _verdict import verdict

from dltune import compress, load_config, train

ROOT = Path(__file__).resolve().parent.parent
SEED_MNIST = ROOT / "examples" / "seed_mnist.toml"
CNN = {"model.name": "cnn", "model.channels": [32, 64], "model.head": [128], "train.epochs": 3}
TARGETS = {  # key -> (target, higher is better)
    "int8_size_ratio": (3.5, True), "int8_speedup_b1000": (3.0, True), "int8_accuracy_drop": (0.3, False),
    "pruned_speedup_b1000": (1.6, True), "pruned_accuracy_drop": (0.5, False),
    "combined_speedup_b1000": (5.0, True), "combined_size_ratio": (6.0, True), "combined_accuracy_drop": (0.5, False),
    "cnn_onnx_speedup_b1000": (4.0, True),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only a JSON document")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the methods that train (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=30, help="latency samples per model and batch size")
    args = parser.parse_args()
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else print
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        mlp = _compressed(Path(tmp), "mlp", {}, ["int8", "prune", "prune+int8"], args, log)
        cnn = _compressed(Path(tmp), "cnn", CNN, ["onnx", "int8"], args, log)
        limits = _limits(Path(tmp) / "mlp", mlp, args.rounds)
    rows, crows = {r["method"]: r for r in mlp["rows"]}, {r["method"]: r for r in cnn["rows"]}
    report = {
        "int8_size_ratio": rows["original"]["size_bytes"] / rows["int8"]["size_bytes"],
        "int8_speedup_b1000": _speedup(rows, "int8"),
        "int8_accuracy_drop": -rows["int8"]["delta"],
        "pruned_speedup_b1000": _speedup(rows, "prune"),
        "pruned_accuracy_drop": -rows["prune"]["delta"],
        "pruned_accuracy_drop_se": _se(rows["prune"]),
        "combined_speedup_b1000": _speedup(rows, "prune+int8"),
        "combined_size_ratio": rows["original"]["size_bytes"] / rows["prune+int8"]["size_bytes"],
        "combined_accuracy_drop": -rows["prune+int8"]["delta"],
        "combined_accuracy_drop_se": _se(rows["prune+int8"]),
        "cnn_onnx_speedup_b1000": _speedup(crows, "onnx"),
        "cnn_int8_speedup_b1000": _speedup(crows, "int8"),
        "cnn_int8_mode": crows["int8"]["details"].get("int8_mode"),
        "cnn_int8_choice_ms": crows["int8"]["details"].get("int8_choice"),
        **limits,
        "mlp_rows": mlp["rows"], "cnn_rows": cnn["rows"], "seeds": args.seeds, "rounds": args.rounds,
        "seconds": time.perf_counter() - start,
    }
    limit_of = {"int8_speedup_b1000": ("int8_speedup_b1000_limit", "int8 matrix products alone"),
                "pruned_speedup_b1000": ("pruned_speedup_b1000_limit", "the parameter ratio")}
    for key, (target, higher) in TARGETS.items():
        limit, source = limit_of.get(key, (None, ""))
        report[f"verdict_{key}"] = verdict(report[key], target, higher=higher,
                                           limit=report.get(limit) if limit else None, source=source)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for name, result in (("reference MLP", mlp), ("CNN", cnn)):
        print(f"\n{name}: test accuracy, size, latency (ms, median over {args.rounds}, 1 thread)")
        for r in result["rows"]:
            lat = "  ".join(f"b{b} {v['median_ms']:.3f}" for b, v in r["latency"].items())
            print(f"  {r['method']:<12} {r['runtime']:<12} {100 * r['metric']['mean']:6.2f}%  {r['size_bytes']:>9,} B  "
                  f"{r['parameters']:>8,} params  {lat}")
    print()
    for key, (target, higher) in TARGETS.items():
        print(f"{key:<26} {report[key]:8.2f}  (target {'>=' if higher else '<='} {target}): {report['verdict_' + key]}")
    print(f"limits: int8 matrix products alone {report['int8_speedup_b1000_limit']:.2f}x; "
          f"pruned parameter ratio {report['pruned_speedup_b1000_limit']:.2f}x")
    print(f"{report['seconds']:.0f}s in all")
    return 0


def _compressed(tmp: Path, name: str, overrides: dict, methods: list[str], args: argparse.Namespace, log) -> dict:
    # the run's config.toml carries [compress], which compress reads back
    config = load_config(SEED_MNIST, {**overrides, "train.device": "cpu", "compress.rounds": args.rounds})
    t0 = time.perf_counter()
    train(config, out_dir=tmp / name)
    log(f"{name}: trained in {time.perf_counter() - t0:.1f}s")
    result = compress(tmp / name, tmp / f"{name}-compressed", methods=methods, seeds=args.seeds, on_row=log)
    return result.to_dict()


def _speedup(rows: dict, method: str) -> float:
    return rows["original"]["latency"]["1000"]["median_ms"] / rows[method]["latency"]["1000"]["median_ms"]


def _se(row: dict) -> float | None:
    values = [100 * v for v in row["per_seed"]]
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else None


def _limits(run_dir: Path, mlp: dict, rounds: int) -> dict[str, float]:
    """What the int8 MLP's matrix products alone take in onnxruntime, and the pruned parameter ratio."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from dltune.compression.measure import latencies
    from dltune.compression.onnx_io import session

    rows = {r["method"]: r for r in mlp["rows"]}
    shapes = [(784, 500), (500, 10)]
    nodes, inits, previous = [], [], "x"
    for i, (n_in, n_out) in enumerate(shapes):
        inits.append(helper.make_tensor(f"w{i}", TensorProto.INT8, (n_in, n_out),
                                        np.random.default_rng(i).integers(-127, 127, (n_in, n_out)).astype(np.int8).tobytes(),
                                        raw=True))
        out = f"y{i}" if i < len(shapes) - 1 else "logits"
        nodes.append(helper.make_node("MatMulInteger", [previous, f"w{i}"], [f"i{i}"]))
        nodes.append(helper.make_node("Cast", [f"i{i}"], [out], to=TensorProto.UINT8 if out != "logits"
                                      else TensorProto.INT32))
        previous = out
    graph = helper.make_graph(nodes, "matmuls", [helper.make_tensor_value_info("x", TensorProto.UINT8, [None, 784])],
                              [helper.make_tensor_value_info("logits", TensorProto.INT32, [None, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = run_dir.parent / "matmuls.onnx"
    onnx.save(model, str(path))
    sess = session(path, 1)
    x = np.random.default_rng(0).integers(0, 255, (1000, 784)).astype(np.uint8)  # activations: uint8, as quantized
    import torch

    timed = latencies({"matmuls": lambda xb: sess.run(None, {"x": x})}, torch.zeros(1000, 1), (1000,), rounds, 1)
    bare = timed["matmuls"]["1000"]["median_ms"]
    return {"int8_speedup_b1000_limit": rows["original"]["latency"]["1000"]["median_ms"] / bare,
            "int8_matmuls_ms_b1000": bare,
            "pruned_speedup_b1000_limit": rows["original"]["parameters"] / rows["prune"]["parameters"]}


if __name__ == "__main__":
    sys.exit(main())
