"""dltune's training loop against the article's loop and against a bare hand-written loop.

What is measured, on the reference experiment (examples/seed_mnist.toml: MLP 784-500-10 ReLU,
Adam lr 1e-3, batch 100, cross-entropy, seed 1, mnist-5k; same split, model, seed and epochs):

* reference: the article's own loop (its §5.2): a per-sample Dataset whose __getitem__ turns one
  uint8 28x28 image into a float tensor, divides by 255 and normalizes with (x - 0.5) / 0.5,
  read by DataLoader(batch_size=100, shuffle=True, num_workers=2); the article's Net (fc1 784->500,
  relu, fc2 500->10), Adam, CrossEntropyLoss, torch.manual_seed(1). Test accuracy through
  DataLoader(batch_size=100, num_workers=2) over the same test split.
* dltune: dltune.train(config); samples/s = result.samples_per_second.
* bare: a hand-written loop with dltune's tensor batching (split tensors in memory, seeded
  torch.randperm, index slicing), the model from dltune.models.build_model, Adam, F.cross_entropy.
* GFLOP/s: dltune at batch 256; analytic FLOPs of the MLP (forward matmuls, weight gradients of
  both layers, input gradient of the output layer only) over train_seconds, against the best
  torch.matmul rate on 2048x2048 float32 matrices measured in the same run, same thread count.
  What bounds that fraction here, measured in the same run: the bare loop below at batch 256 (what an
  eager-mode loop of this model reaches), and the MLP's own matmuls at batch 256 timed alone (the same
  FLOPs: forward, weight gradients, the output layer's input gradient; no loop can beat them).

* compiled: dltune at batch 256 with train.compile = true (torch.compile of the training steps): its
  GFLOP/s, the seconds spent compiling (reported apart by train(), before the first epoch), the
  seconds it saves per epoch against the eager run at 256, and so from how many epochs it pays.

Timing rule, the same for all: only the training epochs are timed (dltune's train_seconds times
optimizer steps only; its per-epoch evaluation is timed apart), so the reference's time is its
training epochs, wall clock, including the DataLoader workers' start-up in every epoch (that is
what the user waits for), and excludes its test evaluation. samples/s = train examples x epochs /
seconds. The runs alternate (reference, dltune and bare in turn first, dltune and bare at 256, matmul
peak, the MLP's matmuls) for --rounds rounds; medians are reported (the table adds min..max over rounds).
overhead = dltune's median seconds per epoch / the bare loop's - 1 (epochs pooled over rounds).

Run:  .venv/bin/python benchmarks/bench_loop.py [--json] [--rounds 5] [--epochs 10]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from _verdict import verdict

from dltune.experiment.config import load_config, override
from dltune.data import load_data
from dltune.data.sources import DATASETS
from dltune.data.split import split_arrays
from dltune.models import build_model
from dltune import train

CONFIG = Path(__file__).resolve().parent.parent / "examples" / "seed_mnist.toml"
TARGETS = {"speedup": 3.0, "accuracy_gap": 0.01, "peak_fraction": 0.5, "overhead": 0.03}


# --- the article's loop ------------------------------------------------------------------------
class MnistImages(Dataset):
    """One uint8 image at a time, converted and normalized per sample (ToTensor + Normalize)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.images[i]).float().div(255.0).unsqueeze(0)  # (1, 28, 28) in [0, 1]
        return (x - 0.5) / 0.5, int(self.labels[i])


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 500)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(x)))


def reference_run(train_ds: Dataset, test_ds: Dataset, epochs: int, seed: int = 1) -> tuple[float, float]:
    """(training seconds, test accuracy) of the article's loop (its seed is 1)."""
    torch.manual_seed(seed)
    net = Net()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    train_loader = DataLoader(train_ds, batch_size=100, shuffle=True, num_workers=2)
    start = time.perf_counter()
    for epoch in range(epochs):
        for i, (images, labels) in enumerate(train_loader):
            images = images.view(-1, 28 * 28)
            optimizer.zero_grad()
            outputs = net(images)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - start
    correct = total = 0
    with torch.no_grad():
        for images, labels in DataLoader(test_ds, batch_size=100, shuffle=False, num_workers=2):
            predicted = net(images.view(-1, 28 * 28)).argmax(1)
            correct += int((predicted == labels).sum())
            total += len(labels)
    return seconds, correct / total


# --- the bare loop with dltune's batching ------------------------------------------------------
def bare_run(config, splits) -> tuple[list[float], float]:
    """(seconds of each epoch, test accuracy) of a hand-written loop batched as dltune batches."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(config.train.deterministic, warn_only=True)  # as train() does
    try:
        x, y = splits.train
        size = config.batch.size
        torch.manual_seed(config.train.seed)
        model = build_model(config.model, splits.input_shape, splits.n_outputs)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.optim.lr, fused=True)  # dltune's Adam kernel
        generator = torch.Generator().manual_seed(config.train.seed)
        epoch_seconds = []
        for _ in range(config.train.epochs):
            start = time.perf_counter()
            order = torch.randperm(len(y), generator=generator)
            xs, ys = x[order], y[order]
            for i in range(0, len(y), size):
                loss = F.cross_entropy(model(xs[i : i + size]), ys[i : i + size])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            epoch_seconds.append(time.perf_counter() - start)
        with torch.no_grad():
            x_test, y_test = splits.test
            accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
        return epoch_seconds, accuracy
    finally:
        torch.use_deterministic_algorithms(deterministic)


# --- FLOPs and the matmul peak -----------------------------------------------------------------
def mlp_train_flops(n_examples: int, sizes: list[int]) -> float:
    """FLOPs of one epoch of an MLP's matmuls: forward, weight gradients, and input gradients of
    every layer but the first (the input needs no gradient). Linear in the batch size, so the
    last, short batch needs no special case."""
    macs = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    input_grads = sum(a * b for a, b in zip(sizes[1:-1], sizes[2:]))
    return 2.0 * n_examples * (2 * macs + input_grads)


def matmul_peak_gflops(n: int = 2048, warmup: int = 3, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(warmup):
        torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


def mlp_matmul_gflops(sizes: list[int], batch: int, reps: int = 20) -> float:
    """GFLOP/s of one training step's matmuls of the MLP alone (as counted by mlp_train_flops), best of
    `reps`: the forward layers (with bias, as nn.Linear), each layer's weight gradient, and the input
    gradient of every layer but the first."""
    weights = [torch.randn(b, a) for a, b in zip(sizes[:-1], sizes[1:])]  # (out, in), as nn.Linear
    biases = [torch.randn(b) for b in sizes[1:]]
    acts = [torch.randn(batch, a) for a in sizes]  # (B, width) per layer
    grads = [torch.randn(batch, b) for b in sizes[1:]]

    def step() -> None:
        for w, b, x in zip(weights, biases, acts):
            F.linear(x, w, b)  # (B, out)
        for g, x in zip(grads, acts):
            g.T @ x  # (out, in): weight gradient
        for g, w in zip(grads[1:], weights[1:]):
            g @ w  # (B, in): input gradient

    for _ in range(3):
        step()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return mlp_train_flops(batch, sizes) / best / 1e9


# --- the benchmark -----------------------------------------------------------------------------
def raw_split_images(config) -> tuple[MnistImages, MnistImages]:
    """The article's Datasets over the same raw uint8 images of dltune's train and test splits."""
    raw_cfg = override(config, {"data.normalize": "none"}).data
    raw = split_arrays(DATASETS.get(raw_cfg.name)(raw_cfg), raw_cfg, raw_cfg.name)  # pixels in [0, 1]

    def to_uint8(part):
        x, y = part
        return MnistImages(torch.round(x * 255).to(torch.uint8).squeeze(1).numpy(), y.numpy())

    return to_uint8(raw.train), to_uint8(raw.test)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only a JSON document")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per run (default 10)")
    parser.add_argument("--threads", type=int, help="torch threads of every loop and the peak (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))

    config = override(load_config(CONFIG), {"train.epochs": args.epochs})
    config_256 = override(config, {"batch.size": 256})
    splits = load_data(config.data)
    train_ds, test_ds = raw_split_images(config)
    n_train = len(splits.train[1])
    assert len(train_ds) == n_train and torch.equal(torch.from_numpy(train_ds.labels), splits.train[1])
    sizes = [int(np.prod(splits.input_shape)), *config.model.hidden, splits.n_outputs]
    flops_per_epoch = mlp_train_flops(n_train, sizes)
    samples = n_train * args.epochs

    ref_sps, ref_acc, dl_sps, dl_acc, dl_epoch, bare_epoch, bare_sps, bare_acc = ([] for _ in range(8))
    gflops, bare_gflops, peaks, mm = [], [], [], []  # at batch 256: dltune, the bare loop; the 2048 matmul; the
    # MLP's matmuls alone
    compiled_gflops, compile_seconds, epoch_saved = [], [], []  # dltune at 256 with train.compile
    wall = time.perf_counter()
    for r in range(1, args.rounds + 1):
        seconds, acc = reference_run(train_ds, test_ds, args.epochs)
        ref_sps.append(samples / seconds)
        ref_acc.append(acc)
        for which in ("dltune", "bare") if r % 2 else ("bare", "dltune"):  # alternate who runs first
            if which == "dltune":
                result = train(config)
                dl_sps.append(result.samples_per_second)
                dl_acc.append(result.test["accuracy"])
                dl_epoch += [e["seconds"] for e in result.epochs]
            else:
                epoch_seconds, acc = bare_run(config, splits)
                bare_epoch += epoch_seconds
                bare_sps.append(samples / sum(epoch_seconds))
                bare_acc.append(acc)
        result_256 = train(config_256)
        gflops.append(flops_per_epoch * args.epochs / result_256.train_seconds / 1e9)
        bare_gflops.append(flops_per_epoch * args.epochs / sum(bare_run(config_256, splits)[0]) / 1e9)
        compiled = train(override(config_256, {"train.compile": True}))
        compiled_gflops.append(flops_per_epoch * args.epochs / compiled.train_seconds / 1e9)
        compile_seconds.append(compiled.compile_seconds)
        epoch_saved.append((result_256.train_seconds - compiled.train_seconds) / args.epochs)
        peaks.append(matmul_peak_gflops())
        mm.append(mlp_matmul_gflops(sizes, config_256.batch.size))
        log(f"round {r}/{args.rounds}: reference {ref_sps[-1]:,.0f}/s acc {ref_acc[-1]:.4f} | dltune "
            f"{dl_sps[-1]:,.0f}/s acc {dl_acc[-1]:.4f} | bare {bare_sps[-1]:,.0f}/s "
            f"| at 256: {gflops[-1]:.1f} GFLOP/s, bare {bare_gflops[-1]:.1f}, matmuls alone {mm[-1]:.1f}, "
            f"peak {peaks[-1]:.1f}; compiled {compiled_gflops[-1]:.1f} after {compile_seconds[-1]:.1f} s compiling")
    wall = time.perf_counter() - wall

    med = statistics.median
    out = {
        "reference_samples_per_second": med(ref_sps),
        "dltune_samples_per_second": med(dl_sps),
        "speedup": med(dl_sps) / med(ref_sps),
        "reference_accuracy": med(ref_acc),
        "dltune_accuracy": med(dl_acc),
        "gflops": med(gflops),
        "peak_gflops": med(peaks),
        "bare_gflops": med(bare_gflops),  # the bare loop at batch 256
        "matmul_gflops": med(mm),  # the MLP's matmuls alone at batch 256
        "peak_fraction": med(gflops) / med(peaks),
        "peak_fraction_limit": med(bare_gflops) / med(peaks),  # what an eager loop reaches here
        "matmul_peak_fraction": med(mm) / med(peaks),
        "overhead": med(dl_epoch) / med(bare_epoch) - 1.0,
        "compiled_gflops": med(compiled_gflops),  # dltune at batch 256 with train.compile
        "compile_seconds": med(compile_seconds),
        "compile_seconds_first": compile_seconds[0],  # the first compile in this process (later ones hit caches)
        "compile_epoch_seconds_saved": med(epoch_saved),
        # epochs after which the process's first compile has paid for itself (None: it never does here); later
        # compiles of the same model in one process (an ablation, a search) hit torch's caches and cost little
        "compile_pays_after_epochs": (math.ceil(compile_seconds[0] / med(epoch_saved))
                                      if med(epoch_saved) > 0 else None),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0

    fraction = out["peak_fraction"]
    diff = out["dltune_accuracy"] - out["reference_accuracy"]
    print(f"\nmnist-5k, {n_train} training examples, {args.epochs} epochs, {args.rounds} rounds (medians), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {wall:.0f} s")
    span = lambda v, f="{:,.0f}": f"[{f.format(min(v))}..{f.format(max(v))}]"  # noqa: E731
    rows = [
        ("reference loop (DataLoader, 2 workers)", f"{out['reference_samples_per_second']:,.0f} samples/s",
         span(ref_sps), f"test acc {out['reference_accuracy']:.4f}"),
        ("dltune", f"{out['dltune_samples_per_second']:,.0f} samples/s", span(dl_sps),
         f"test acc {out['dltune_accuracy']:.4f}"),
        ("bare loop (dltune's batching)", f"{med(bare_sps):,.0f} samples/s", span(bare_sps),
         f"test acc {med(bare_acc):.4f}"),
        ("dltune at batch 256", f"{out['gflops']:.1f} GFLOP/s", span(gflops, "{:.0f}"),
         f"peak {out['peak_gflops']:.1f} {span(peaks, '{:.0f}')} GFLOP/s (matmul 2048)"),
        ("bare loop at batch 256", f"{out['bare_gflops']:.1f} GFLOP/s", span(bare_gflops, "{:.0f}"),
         f"{out['peak_fraction_limit']:.0%} of peak"),
        ("the MLP's matmuls alone at batch 256", f"{out['matmul_gflops']:.1f} GFLOP/s", span(mm, "{:.0f}"),
         f"{out['matmul_peak_fraction']:.0%} of peak"),
    ]
    print(f"  {'':<40} {'median':>22}   {'range':<18}")
    for name, a, r, b in rows:
        print(f"  {name:<40} {a:>22}   {r:<18} {b}")
    print(f"  seconds per epoch: dltune {med(dl_epoch) * 1e3:.1f} ms, bare {med(bare_epoch) * 1e3:.1f} ms")
    pays = out["compile_pays_after_epochs"]
    print(f"  train.compile at batch 256: {out['compiled_gflops']:.1f} GFLOP/s {span(compiled_gflops, '{:.0f}')} "
          f"({out['compiled_gflops'] / out['peak_gflops']:.0%} of peak) after {out['compile_seconds']:.1f} s "
          f"compiling (first: {out['compile_seconds_first']:.1f} s); it saves "
          f"{out['compile_epoch_seconds_saved'] * 1e3:+.1f} ms per epoch, so the first compile pays "
          + (f"from {pays:,} epochs on" if pays is not None else "at no number of epochs") + " here")
    print("targets:")
    print(f"  speedup {out['speedup']:.2f}x (target >= {TARGETS['speedup']:.0f}x): "
          f"{verdict(out['speedup'], TARGETS['speedup'])}")
    # speed must not cost accuracy; being better is no failure
    print(f"  accuracy dltune - reference {diff * 100:+.2f} points (target: not worse by more than 1 point): "
          f"{verdict(diff, -TARGETS['accuracy_gap'])}")
    peak = verdict(fraction, TARGETS["peak_fraction"], limit=out["peak_fraction_limit"], shown="{:.0%}".format,
                   source=f"a bare eager loop at batch 256; its matmuls alone: {out['matmul_peak_fraction']:.0%}")
    print(f"  {fraction:.0%} of measured peak at batch 256 (target >= {TARGETS['peak_fraction']:.0%}): {peak}")
    print(f"  overhead {out['overhead']:+.1%} (target <= {TARGETS['overhead']:.0%}): "
          f"{verdict(out['overhead'], TARGETS['overhead'], higher=False)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
