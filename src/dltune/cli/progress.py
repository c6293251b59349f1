"""Progress of a run (per epoch) and of a study (per trial): a rich progress bar on a terminal, plain lines
otherwise."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from dltune.epochs import EpochRecord


def describe_epoch(record: Mapping[str, Any], epochs: int) -> str:
    """One line: epoch n/N, train and val loss, val metrics, lr, throughput."""
    parts = [f"epoch {record['epoch']:>{len(str(epochs))}}/{epochs}", f"train loss {record['train']['loss']:.4f}"]
    for name, value in (record.get("val") or {}).items():
        parts.append(f"val {name} {value:.4f}")
    parts += [f"lr {record['lr']:.3g}", f"{record['samples_per_second']:,.0f} samples/s", f"{record['seconds']:.2f}s"]
    if record["train"].get("skipped_steps"):  # fp16: the GradScaler's skips, an overflow each
        parts.append(f"{record['train']['skipped_steps']} steps skipped (fp16 overflow)")
    return "  ".join(parts)


class _Bar:
    """A rich progress bar on a terminal (`self.progress`), none in a pipe; shown while used as a context manager."""

    progress: Progress | None = None
    console: Console

    def line(self, text: str) -> None:
        """A line of its own (a method's result, a study's state), above the bar on a terminal."""
        if self.progress is not None:
            self.progress.console.print(text, highlight=False, soft_wrap=True)
        else:
            self.console.file.write(text + "\n")
            self.console.file.flush()

    def __enter__(self) -> Any:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


class EpochDisplay(_Bar):
    """An on_epoch hook that shows each finished epoch; use as a context manager."""

    def __init__(self, epochs: int, stream: TextIO) -> None:
        self.epochs = epochs
        self.console = Console(file=stream)
        self.progress: Progress | None = None
        if self.console.is_terminal:
            self.progress = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=self.console, transient=True)
            self.task = self.progress.add_task("epochs", total=epochs)


    def __call__(self, epoch: int, record: EpochRecord) -> None:
        line = describe_epoch(record, self.epochs)
        if self.progress is not None:
            self.progress.console.print(line, highlight=False)
            self.progress.advance(self.task)
        else:
            self.console.file.write(line + "\n")
            self.console.file.flush()


class TrainingLines(_Bar):
    """An on_epoch hook for several trainings one after another (compress's fine-tuning and distillation): a line per
    epoch, named by what trains; on a terminal, what trains now and the time since the command began below them."""

    def __init__(self, stream: TextIO) -> None:
        self.console = Console(file=stream)
        self.progress: Progress | None = None
        if self.console.is_terminal:
            self.progress = Progress(TextColumn("{task.description}"), TimeElapsedColumn(), console=self.console,
                                     transient=True)
            self.task = self.progress.add_task("", total=None)

    def __call__(self, what: str, epoch: int, epochs: int, record: EpochRecord) -> None:
        self.line(f"{what}, {describe_epoch(record, epochs)}")
        if self.progress is not None:
            self.progress.update(self.task, description=f"{what}: {epoch}/{epochs} epochs done")


class StudyProgress(_Bar):
    """The trials (or runs) of a study as they end. On a terminal: their lines above a bar of finished / target
    with the elapsed time, an ETA and the best value so far with its trial; in a pipe or a log: the lines alone."""

    def __init__(self, what: str, stream: TextIO, maximize: bool, terminal: bool | None = None) -> None:
        self.console = Console(file=stream, force_terminal=terminal)
        self.maximize = maximize
        self.best: tuple[float, str] | None = None
        self.progress: Progress | None = None
        if self.console.is_terminal:
            self.progress = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                     TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[best]}"),
                                     console=self.console, transient=True)
            self.task = self.progress.add_task(what, total=None, best="")


    def start(self, finished: int, target: int) -> None:
        """The study holds `finished` of its `target` already (a resumed study)."""
        if self.progress is not None:
            self.progress.update(self.task, completed=finished, total=target)

    def ended(self, line: str, counts: bool, value: float | None = None, label: str = "") -> None:
        """One trial ended: its line; `counts` towards the target; `value` of the first objective, by `label`."""
        if value is not None and math.isfinite(value) and (
                self.best is None or (value > self.best[0] if self.maximize else value < self.best[0])):
            self.best = (value, label)
        if self.progress is None:
            self.console.file.write(line + "\n")
            self.console.file.flush()
            return
        self.progress.console.print(line, highlight=False, soft_wrap=True)
        best = f"best {self.best[0]:.4g} ({self.best[1]})" if self.best else ""
        self.progress.update(self.task, advance=1 if counts else 0, best=best)
