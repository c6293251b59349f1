"""Per-epoch progress of a run: a rich progress bar on a terminal, plain lines otherwise."""

from __future__ import annotations

from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def describe_epoch(record: dict[str, Any], epochs: int) -> str:
    """One line: epoch n/N, train and val loss, val metrics, lr, throughput."""
    parts = [f"epoch {record['epoch']:>{len(str(epochs))}}/{epochs}", f"train loss {record['train']['loss']:.4f}"]
    for name, value in (record.get("val") or {}).items():
        parts.append(f"val {name} {value:.4f}")
    parts += [f"lr {record['lr']:.3g}", f"{record['samples_per_second']:,.0f} samples/s", f"{record['seconds']:.2f}s"]
    return "  ".join(parts)


class EpochDisplay:
    """An on_epoch hook that shows each finished epoch; use as a context manager."""

    def __init__(self, epochs: int, stream: TextIO) -> None:
        self.epochs = epochs
        self.console = Console(file=stream)
        self.progress: Progress | None = None
        if self.console.is_terminal:
            self.progress = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=self.console, transient=True)
            self.task = self.progress.add_task("epochs", total=epochs)

    def __enter__(self) -> EpochDisplay:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, epoch: int, record: dict[str, Any]) -> None:
        line = describe_epoch(record, self.epochs)
        if self.progress is not None:
            self.progress.console.print(line, highlight=False)
            self.progress.advance(self.task)
        else:
            self.console.file.write(line + "\n")
            self.console.file.flush()
