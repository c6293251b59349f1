"""The report of `dltune profile` for the terminal: where a step's time goes (phases, operators), what it reaches
(throughput, memory, FLOP/s against the matmul peak) and the measured advice.

The rows and lines are made first by small pure functions (`phase_rows`, `operator_rows`, `summary_lines`,
`advice_lines`), then laid out with rich (`render`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from dltune.tuner.profile import ProfileResult

__all__ = ["advice_lines", "operator_rows", "phase_rows", "render", "summary_lines"]


def _ms(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:#.3g}"  # 3 significant digits, trailing zeros kept: 8.00, 0.0450


def _share(x: float) -> str:
    return "<1%" if 0 < x < 0.005 else f"{x:.0%}"


def phase_rows(result: ProfileResult) -> list[tuple[str, str, str]]:
    """(phase, ms per step, share of the phases' sum), then the sum, the measured step and evaluation."""
    rows = [(p.name, _ms(p.ms), _share(p.share)) for p in result.phases]
    rows.append(("phases' sum", _ms(result.phases_ms), "100%"))
    rows.append(("measured step (no timers)", _ms(result.step_ms), f"sum = {result.ratio:.0%} of it"))
    if result.evaluation_ms is not None:
        rows.append(("evaluation, per training step", _ms(result.evaluation_ms),
                     f"+{result.evaluation_ms / result.step_ms:.0%} of a step"))
    return rows


def operator_rows(result: ProfileResult) -> list[tuple[str, str, str, str]]:
    """(operator, calls per step, self ms per step, share of all operators' self time)."""
    return [(o.name, f"{o.calls:g}", _ms(o.self_ms), _share(o.share)) for o in result.operators]


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _flop(n: float) -> str:
    """FLOPs in the unit that keeps 3 significant digits readable: 160 MFLOP, 2.41 GFLOP."""
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if n >= scale:
            return f"{_number(n / scale)} {unit}"
    return f"{n:.0f} FLOP"


def _number(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"  # 160, 2.41, 1,234


def _percent(x: float) -> str:
    return f"{x:.0%}" if x >= 0.1 else f"{x * 100:.2g}%"  # 51%, 107%, 9.4%, 0.14%


def summary_lines(result: ProfileResult) -> list[str]:
    """Throughput, memory and compute, one line each."""
    lines = [f"throughput: {result.samples_per_second:,.0f} samples/s (batch {result.batch_size}, median step "
             f"{_ms(result.step_median_ms)} ms)"]
    memory = f"memory: peak RSS {_mib(result.peak_rss_bytes)}"
    if result.cuda_peak_bytes is not None:
        memory += f", CUDA peak allocated {_mib(result.cuda_peak_bytes)}"
    lines.append(memory)
    peak = result.peak_gflops[result.peak_dtype]
    lines.append(f"compute: {_flop(result.flops_per_step)} per step (matmuls and convolutions, forward and backward) "
                 f"at {_number(result.gflops)} GFLOP/s: {_percent(result.peak_share)} of a square matmul's "
                 f"{_number(peak)} GFLOP/s in {result.peak_dtype}, measured here")
    return lines


def advice_lines(result: ProfileResult) -> tuple[list[str], list[str]]:
    """The advice given, and what was checked and not advised (each with what was measured)."""
    return [a.text for a in result.checks if a.fired], [a.text for a in result.checks if not a.fired]


def render(result: ProfileResult, console: Console, source: str) -> None:
    """The whole report on `console`; `source` names what was profiled (the experiment file)."""
    from rich.table import Table
    from rich.text import Text

    console.print(Text(f"profile: {source}: {result.steps} steps of batch {result.batch_size} on {result.device}, "
                       f"{result.precision}, {result.threads} thread{'s' if result.threads != 1 else ''}"))
    phases = Table(title="where a training step's time goes")
    for name, right in (("phase", False), ("ms/step", True), ("share", True)):
        phases.add_column(name, justify="right" if right else "left")
    for row in phase_rows(result):
        phases.add_row(*map(Text, row))
    console.print(phases)
    operators = Table(title="top operators by self time (torch.profiler)")
    for name, right in (("operator", False), ("calls/step", True), ("self ms/step", True), ("share", True)):
        operators.add_column(name, justify="right" if right else "left")
    for op_row in operator_rows(result):
        operators.add_row(*map(Text, op_row))
    console.print(operators)
    for line in summary_lines(result):
        console.print(Text(line))
    given, silent = advice_lines(result)
    console.print(Text("advice (each measured beside this setting):" if given else "advice: none"))
    for text in given:
        console.print(Text(f"  - {text}"))
    if silent:
        console.print(Text("checked, not advised:"))
        for text in silent:
            console.print(Text(f"  - {text}"))
    if result.trace is not None:
        console.print(Text(f"trace: {result.trace} (open it in https://ui.perfetto.dev or chrome://tracing)"))
