"""The report of `dltune compress` from a hand-built result (no training): the Pareto front, the table's cells in
Markdown, the terminal and HTML, and the page in a real browser with nothing fetched."""

from __future__ import annotations

import base64
import re
from dataclasses import replace
from pathlib import Path

import pytest

from dltune.compression import CompressResult, Row
from dltune.report.compress_report import (details_text, front, markdown_table, pareto_front, points, publish, render,
                                           speedup, terminal_table, times_smaller)

try:  # the browser check reuses the ablation report's launcher; without playwright only that check is skipped
    from test_report_browser import chromium, offline_page, sync_api  # noqa: F401  (chromium: a fixture)
except pytest.skip.Exception:
    sync_api = None

CONFIG = {"methods": ["onnx", "int8", "prune", "prune+int8"], "seeds": 3, "rounds": 15, "batch_sizes": [1, 1000],
          "threads": 1, "tolerance": 1e-4}


def _latency(b1: tuple[float, float, float], b1000: tuple[float, float, float]) -> dict[str, dict[str, float]]:
    return {b: dict(zip(("median_ms", "min_ms", "max_ms"), t, strict=True)) for b, t in (("1", b1), ("1000", b1000))}


def _one(mean: float) -> dict[str, float | None]:
    return {"mean": mean, "std": None, "ci_low": None, "ci_high": None, "n": 1}


def result(tmp: Path = Path("/runs/mnist-mlp")) -> CompressResult:
    """Latency at batch 1000 against accuracy: prune+int8 (1.5 ms, 96.30%), int8 (3.2, 97.05) and onnx (6.0, 97.12)
    are the Pareto front; prune (4.0, 96.50) loses to int8, the original (8.0, 97.12) to onnx (a tie in accuracy)."""
    out = f"{tmp}-compressed"
    rows = [
        Row("original", "torch", [str(tmp)], 438_000, 109_386, _one(0.9712), [0.9712],
            _latency((0.05, 0.045, 0.08), (8.0, 7.5, 9.1))),
        Row("onnx", "onnxruntime", [f"{out}/onnx"], 437_504, 109_386, _one(0.9712), [0.9712],
            _latency((0.02, 0.018, 0.03), (6.0, 5.8, 6.9)), 0.0, {"onnx_max_difference": 2.4e-6}),
        Row("int8", "onnxruntime", [f"{out}/int8"], 112_000, 109_386, _one(0.9705), [0.9705],
            _latency((0.03, 0.028, 0.05), (3.2, 3.1, 3.6)), 100 * (0.9705 - 0.9712),
            {"onnx_max_difference": 2.4e-6, "int8_mode": "dynamic", "int8_choice": {"dynamic": 3.2, "static": 4.1}}),
        Row("prune", "torch", [f"{out}/prune-seed{s}" for s in (1, 2, 3)], 110_000, 27_210,
            {"mean": 0.965, "std": 0.003, "ci_low": 0.9576, "ci_high": 0.9724, "n": 3}, [0.965, 0.968, 0.962],
            _latency((0.04, 0.037, 0.06), (4.0, 3.8, 4.4)), 100 * (0.965 - 0.9712),
            {"prune": {"parameters_before": 109_386, "parameters_after": 27_210}, "onnx_max_difference": 1.1e-6}),
        Row("prune+int8", "onnxruntime", [f"{out}/prune+int8"], 30_000, 27_210, _one(0.963), [0.963],
            _latency((0.025, 0.02, 0.04), (1.5, 1.4, 1.9)), 100 * (0.963 - 0.9712),
            {"prune": {"parameters_before": 109_386, "parameters_after": 27_210}, "int8_mode": "dynamic"}),
    ]
    return CompressResult(str(tmp), out, "test.accuracy", rows, CONFIG)


# --- data ---------------------------------------------------------------------------------------------------------


def test_pareto_front_keeps_ties_and_drops_dominated_points() -> None:
    costs = [(1.0, 0.90), (2.0, 0.95), (3.0, 0.94), (2.0, 0.95), (0.5, 0.80), (2.0, 0.93), (1.0, 0.90), (4.0, 0.99)]
    # 2 costs more than 1 for less; 5 costs as much as 1 for less; 1 and 3, 0 and 6 are equal: neither dominates
    assert pareto_front(costs) == [4, 0, 6, 1, 3, 7]
    assert pareto_front([(1.0, 0.5), (1.0, 0.5)]) == [0, 1]
    assert pareto_front([(2.0, 0.5), (1.0, 0.5)]) == [1]  # as good for less
    assert pareto_front([]) == []


def test_front_speedups_and_sizes_of_a_result() -> None:
    r = result()
    original, onnx, int8 = r.rows[:3]
    assert [p.method for p in front(r)] == ["prune+int8", "int8", "onnx"]
    assert [p.method for p in points(r) if p.size_front] == ["onnx", "int8", "prune", "prune+int8"]
    assert speedup(original, int8, "1000") == pytest.approx(2.5)
    assert speedup(original, onnx, "1") == pytest.approx(2.5)
    assert speedup(original, replace(int8, latency={}), "1000") is None
    assert times_smaller(original, int8) == pytest.approx(438_000 / 112_000)
    shown = {p.method: p for p in points(r)}
    assert shown["prune"].value == pytest.approx(96.5) and shown["prune"].std == pytest.approx(0.3)
    assert shown["original"].original and shown["int8"].std is None


def test_details_say_how_each_model_was_made() -> None:
    r = result()
    assert details_text(r.rows[0], r.metric) == []
    made = {"magnitude": {"zeros": 80_000, "parameters": 109_386},
            "distill": {"student": {"name": "mlp", "hidden": [64]}, "temperature": 4.0, "alpha": 0.9, "epochs": 10}}
    assert details_text(replace(r.rows[3], details=made), r.metric) == [
        "magnitude pruning: 80,000 of 109,386 weights at zero (73.1%), stored sparse",
        "distilled into {name = mlp, hidden = [64]}: temperature 4, α 0.9, 10 epochs",
        "test.accuracy per seed: 96.50, 96.80, 96.20",
    ]


# --- layouts ------------------------------------------------------------------------------------------------------


def test_markdown_table_formats_every_cell() -> None:
    lines = markdown_table(result()).splitlines()
    assert lines[0] == ("| method | runtime | size (bytes) | × smaller | parameters | latency b=1 (ms) | "
                        "latency b=1000 (ms) | test.accuracy mean ± std (%) | 95% CI | n | Δ vs original (pp) | "
                        "speedup b=1 | speedup b=1000 |")
    assert lines[1] == "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    assert len(lines) == 2 + 5
    assert lines[2] == ("| original | torch | 438,000 | 1.00× | 109,386 | 0.0500 (0.0450..0.0800) | "
                        "8.00 (7.50..9.10) | 97.12 | — | 1 | — | 1.00× | 1.00× |")
    assert lines[3].endswith("| 97.12 | — | 1 | 0 | 2.50× | 1.33× |")  # the same accuracy: Δ exactly 0
    assert lines[4] == ("| int8 | onnxruntime | 112,000 | 3.91× | 109,386 | 0.0300 (0.0280..0.0500) | "
                        "3.20 (3.10..3.60) | 97.05 | — | 1 | −0.07 | 1.67× | 2.50× |")
    assert lines[5] == ("| prune | torch | 110,000 | 3.98× | 27,210 | 0.0400 (0.0370..0.0600) | "
                        "4.00 (3.80..4.40) | 96.50 ± 0.30 | [95.76, 97.24] | 3 | −0.62 | 1.25× | 2.00× |")
    assert lines[6].startswith("| prune+int8 | onnxruntime | 30,000 | 14.60× | 27,210 |")


def test_a_regression_metric_is_not_shown_as_percent() -> None:
    r = result()
    r = replace(r, metric="test.r2", rows=[replace(row, delta=None if row.delta is None else row.delta / 100)
                                           for row in r.rows])
    lines = markdown_table(r).splitlines()
    assert "| test.r2 mean ± std | 95% CI | n | Δ vs original |" in lines[0]
    assert "| 0.9705 | — | 1 | −0.0007 |" in lines[4]
    assert "| 0.965 ± 0.003 | [0.9576, 0.9724] | 3 |" in lines[5]


def test_terminal_table_has_a_row_per_model() -> None:
    from rich.console import Console

    table = terminal_table(result())
    assert table.row_count == 5 and len(table.columns) == 13
    console = Console(record=True, width=260)
    console.print(table)
    text = console.export_text()
    assert "prune+int8" in text and "96.50 ± 0.30" in text and "14.60×" in text
    assert "Pareto front (latency at batch 1000 against test.accuracy): prune+int8 (1.50 ms, 96.30%)" in text


def test_publish_writes_a_self_contained_page_and_the_markdown(tmp_path: Path) -> None:
    r = result()
    html_path, md_path = publish(r, tmp_path / "out")
    assert (html_path, md_path) == (tmp_path / "out" / "report.html", tmp_path / "out" / "results.md")
    assert md_path.read_text().startswith(markdown_table(r))
    html = html_path.read_text()
    assert html == render(r)
    assert html.count('<table id="results">') == 1
    body = html.split('<table id="results">')[1].split("</tbody>")[0]
    assert body.count("<tr") == 1 + 5  # the header's and one per model
    assert "<td class=\"num\">−0.07</td>" in body and "<td class=\"num\">[95.76, 97.24]</td>" in body
    assert body.count('class="front"') == 3
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"[^>]*data-plot="tradeoff"', html)
    assert len(images) == 1 and base64.b64decode(images[0]).startswith(b"\x89PNG\r\n\x1a\n")
    assert not re.search(r"""(?:src|href|url)\s*[=(]\s*["']?\s*(?:https?:)?//""", html, re.IGNORECASE)
    assert "Content-Security-Policy" in html
    pareto = html.split('<ol id="pareto">')[1].split("</ol>")[0]
    assert pareto == ("<li>prune+int8 (1.50 ms, 96.30%)</li><li>int8 (3.20 ms, 97.05%)</li>"
                      "<li>onnx (6.00 ms, 97.12%)</li>")
    details = html.split('<table id="details">')[1]
    assert "int8 dynamic (measured at the largest batch: dynamic 3.20 ms, static 4.10 ms)" in details
    assert "structured pruning: 109,386 → 27,210 parameters (24.9% kept)" in details
    assert "largest |ONNX − torch| output 2.4e-06" in details
    assert "test.accuracy per seed: 96.50, 96.80, 96.20" in details


# --- browser ------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(sync_api is None, reason="playwright is a test dependency: pip install -e '.[test]'")
def test_report_renders_offline(chromium: str, tmp_path: Path) -> None:
    r = result()
    path, _ = publish(r, tmp_path)
    url = path.resolve().as_uri()
    with offline_page(chromium) as (page, requested, errors):
        page.goto(url, wait_until="load")
        assert page.title() == "Compression: mnist-mlp"
        assert page.locator("#results tbody tr").count() == len(r.rows)
        assert page.locator("#results tbody tr").nth(2).locator("td").first.inner_text().strip() == "int8"
        assert page.locator("#pareto li").count() == 3
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.dataset.plot, e.complete, e.naturalWidth, e.naturalHeight])")
        assert [plot for plot, *_ in images] == ["tradeoff"]
        for plot, complete, width, height in images:
            assert complete and width > 0 and height > 0, f"plot {plot} did not decode"
    outside = [u for u in requested if u != url and not u.startswith("data:")]
    assert not outside, f"the report requested {outside}"
    assert not errors, f"the browser reported {errors}"
