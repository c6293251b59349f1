"""Figures of the finders: loss against lr with the suggestions marked; samples/s or memory per batch size."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dltune.errors import ConfigError
from dltune.files import claim_file, write_bytes
from dltune.report.plots import new_figure, to_png

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["batch_plot", "lr_plot", "save"]


def lr_plot(result) -> Figure:
    """The range test: raw and smoothed loss against lr (log axis), a line per suggestion."""
    fig, (ax,) = new_figure(1, "Learning-rate range test")
    ax.plot(result.lrs, result.losses, color="#bbbbbb", lw=0.8, label="loss per step")
    ax.plot(result.lrs, result.smoothed, color="#1f77b4", lw=2, label="smoothed (bias-corrected EMA)")
    # five colours; lr_rules.SHOWN names six rules, and zip leaves the sixth suggestion's line undrawn
    colors = ("#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
    for (rule, lr), color in zip(result.suggestions.items(), colors, strict=False):
        ax.axvline(lr, color=color, ls="--", lw=1.2, label=f"{rule}: {lr:.2e}")
    ax.set_xscale("log")
    finite = [v for v in result.smoothed if v == v]
    if finite:
        low = min(min(finite), min(v for v in result.losses if v == v))
        ax.set_ylim(low * 0.9, max(finite[0] * 1.5, min(finite) * 2))
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    verdict = "confident" if result.confident else "not confident: " + "; ".join(result.reasons)
    ax.set_title(f"suggested {result.suggested:.2e} ({verdict})" if result.suggested else verdict, fontsize=9)
    ax.legend(fontsize=8)
    return fig


def batch_plot(result) -> Figure:
    """Samples/s (throughput mode) or bytes per step (memory mode) against the batch size."""
    fig, (ax,) = new_figure(1, f"Batch-size finder ({result.mode})")
    if result.mode == "throughput":
        sizes = sorted(result.samples_per_second)
        ax.plot(sizes, [result.samples_per_second[b] for b in sizes], marker="o")
        ax.set_ylabel("samples / s (training steps)")
    else:
        sizes = sorted(result.memory_bytes)
        ax.plot(sizes, [result.memory_bytes[b] / 2**20 for b in sizes], marker="o")
        if result.budget_bytes:
            ax.axhline(result.budget_bytes / 2**20, color="#d62728", ls="--", label="budget")
            ax.legend(fontsize=8)
        ax.set_ylabel("memory per step (MiB)")
    ax.axvline(result.chosen, color="#2ca02c", ls="--", lw=1.2)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (log scale)")
    ax.set_title(f"chosen: {result.chosen}", fontsize=9)
    return fig


def save(fig: Figure, path: str | Path | None, default: str | Path) -> tuple[Path, bool]:
    """Write the figure as a PNG file and return (its path, whether it replaced a file). A `path` the user
    named is replaced if it exists; without one the figure goes to `default`, or `default-2`, `-3`, ... when
    that exists, so that an earlier figure is never lost. Written by rename: no reader sees half a file."""
    png = to_png(fig)
    target = claim_file(default) if path is None else Path(path)
    replaced = path is not None and target.exists()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return write_bytes(target, png), replaced
    except OSError as e:
        raise ConfigError(f"{target}: cannot write the plot ({e.strerror})") from None
