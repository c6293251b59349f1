"""The report layer: statistics against scipy, the Markdown and terminal tables, plots, and the HTML file."""

from __future__ import annotations

import base64
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from scipy import stats

from dltune.study.records import AblationData
from dltune.report import compare, markdown_table, rich_table, rows_to_json, write_report
from dltune.report.cells import DELTA, cells, columns, p_text
from dltune.report.curves import curve, lr_range, val_metric
from dltune.report import plots
from dltune.report.tables import Row, format_changes
from report_data import ablation, classification

BASE = [0.90, 0.91, 0.92]
BETTER = [0.93, 0.95, 0.94]


# --- statistics -------------------------------------------------------------------------------------------------

def test_statistics_match_scipy() -> None:
    base, variant = compare(ablation({"baseline": BASE, "better": BETTER}))
    x = np.array(BETTER)
    assert variant.n == 3 and variant.diverged == 0
    assert variant.mean == pytest.approx(x.mean())
    assert variant.std == pytest.approx(np.std(x, ddof=1))
    low, high = stats.t.interval(0.95, df=2, loc=x.mean(), scale=stats.sem(x))
    assert (variant.ci_low, variant.ci_high) == (pytest.approx(low), pytest.approx(high))
    assert variant.delta == pytest.approx(x.mean() - np.mean(BASE))
    assert variant.p_value == pytest.approx(stats.ttest_ind(x, BASE, equal_var=False).pvalue)
    assert variant.p_value < 0.05
    assert base.delta is None and base.p_value is None and base.changes == "—"
    assert base.mean == pytest.approx(0.91)


def test_unequal_sizes_use_welch_not_student() -> None:
    other = [0.95, 0.80, 0.99, 0.70, 0.90]
    _, row = compare(ablation({"baseline": BASE, "wide": other}))
    assert row.p_value == pytest.approx(stats.ttest_ind(other, BASE, equal_var=False).pvalue)
    assert row.p_value != pytest.approx(stats.ttest_ind(other, BASE, equal_var=True).pvalue)


@pytest.mark.parametrize("values", [BASE, [0.9, 0.9, 0.9]], ids=["same-runs", "constant"])
def test_identical_values_give_no_p_and_zero_delta(values: list[float]) -> None:
    _, same = compare(ablation({"baseline": values, "no-op": list(reversed(values))}))
    assert same.delta == 0
    assert same.p_value is None


def test_zero_spread_on_both_sides_gives_no_p() -> None:
    _, row = compare(ablation({"baseline": [0.9] * 3, "other": [0.95] * 3}))
    assert row.delta == pytest.approx(0.05)
    assert row.p_value is None  # Welch's t is undefined (0/0); scipy rounds its way to a spurious ~1e-30


def test_one_run_has_a_mean_but_no_spread() -> None:
    base, single = compare(ablation({"baseline": [0.9], "single": [0.95]}))
    for row in (base, single):
        assert row.n == 1 and row.std is None and row.ci_low is None and row.ci_high is None
    assert single.mean == pytest.approx(0.95)
    assert single.delta == pytest.approx(0.05)
    assert single.p_value is None


def test_one_baseline_run_gives_delta_without_p() -> None:
    _, row = compare(ablation({"baseline": [0.9], "many": BETTER}))
    assert row.delta == pytest.approx(np.mean(BETTER) - 0.9)
    assert row.p_value is None


def test_diverged_runs_are_counted_apart() -> None:
    _, row = compare(ablation({"baseline": BASE, "unstable": [0.85, None, 0.80, math.nan]}))
    assert (row.n, row.diverged) == (2, 2)
    assert row.mean == pytest.approx(0.825)
    assert row.p_value == pytest.approx(stats.ttest_ind([0.85, 0.80], BASE, equal_var=False).pvalue)
    assert row.train_seconds == pytest.approx(np.mean([1.11, 1.13]))  # only the runs with a metric


def test_all_diverged_gives_empty_row() -> None:
    _, row = compare(ablation({"baseline": BASE, "broken": [None, None]}))
    assert (row.n, row.diverged, row.mean, row.delta, row.p_value) == (0, 2, None, None, None)
    assert row.parameters == 397_510


def test_rows_follow_variant_order_and_timings_are_means() -> None:
    data = classification()
    rows = compare(data)
    assert [r.variant for r in rows] == [v.name for v in data.variants]
    assert rows[1].changes == "schedule.name=exponential, schedule.gamma=0.9"
    assert rows[1].train_seconds == pytest.approx(np.mean([1.11, 1.12, 1.13]))
    assert rows[1].samples_per_second == pytest.approx(41_000.0)


def test_format_changes() -> None:
    assert format_changes({}) == "—"
    assert format_changes({"b.x": True, "a.y": [2, 4], "c": "cosine"}) == "b.x=true, a.y=[2, 4], c=cosine"


def test_rows_to_json_is_strict_json() -> None:
    row = Row("v", "—", 0, math.nan, None, None, None, math.inf, None, 1.0, 2.0, 3, 1)
    (out,) = rows_to_json([row])
    assert out["mean"] is None and out["delta"] is None and out["train_seconds"] == 1.0
    json.dumps(rows_to_json(compare(classification())) + [out], allow_nan=False)


# --- cells, Markdown, terminal ----------------------------------------------------------------------------------

def test_cells_formats_fractions_as_percent() -> None:
    rows = compare(ablation({"baseline": BASE, "better": BETTER}))
    head = [c.name for c in columns("test.accuracy")]
    assert "test.accuracy mean ± std (%)" in head and "n" in head and head[DELTA] == "Δ vs baseline (pp)"
    text = cells(rows[1], "test.accuracy")
    assert text[3] == "94.00 ± 1.00"
    assert text[5] == "+3.00"
    assert p_text(0.0312) == "0.031" and p_text(0.0004) == "<0.001" and p_text(None) == "—"


def test_cells_formats_other_metrics_with_4_significant_digits() -> None:
    rows = compare(ablation({"baseline": [0.123456, 0.125, 0.124], "worse": [0.2, 0.21, 0.22]},
                            metric="test.mse", higher_is_better=False, regression=True))
    assert "(%)" not in columns("test.mse")[3].name
    text = cells(rows[1], "test.mse")
    assert text[3] == "0.21 ± 0.01" and text[5] == "+0.08585"


def test_markdown_table_has_a_header_and_a_row_per_variant() -> None:
    data = classification()
    lines = markdown_table(compare(data), data.metric).strip().splitlines()
    assert len(lines) == 2 + len(data.variants)
    assert lines[0].startswith("| variant | changes | n |") and "p (Welch)" in lines[0]
    assert set(lines[1].replace("|", "")) <= {"-", ":"}
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| 2 (+1 diverged) |" in lines[-1]
    assert "| 0 | — |" in lines[4]  # the no-op variant: Δ 0, no p


def test_rich_table_colours_delta_only_when_significant() -> None:
    data = classification()
    rows = compare(data)
    table = rich_table(rows, data.metric, "title")
    assert len(table.columns) == len(columns(data.metric)) and table.row_count == len(rows)
    delta = list(table.columns[5].cells)
    assert rows[1].p_value < 0.05 and "green" in str(delta[1].spans[0].style)
    assert rows[3].p_value >= 0.05 and str(delta[3].spans[0].style) == "dim"
    worse = rich_table(rows, data.metric, "title", higher_is_better=False)
    assert "red" in str(list(worse.columns[5].cells)[1].spans[0].style)
    console = Console(record=True, width=200)
    console.print(table)
    assert "exp-decay" in console.export_text()


# --- plot data and figures --------------------------------------------------------------------------------------

def test_curve_mean_and_band_skip_missing_values() -> None:
    data = ablation({"baseline": [0.9, 0.91, 0.92]})
    by_seed = [[r.epochs[e]["train"]["loss"] for r in data.results] for e in range(4)]
    data.results[1].epochs[2]["train"]["loss"] = math.nan
    del data.results[2].epochs[3]["train"]
    c = curve(data, "baseline", "train.loss")
    assert list(c.epochs) == [1, 2, 3, 4]
    assert c.mean[0] == pytest.approx(np.mean(by_seed[0]))
    assert c.mean[2] == pytest.approx(np.mean([by_seed[2][0], by_seed[2][2]]))
    assert (c.low[3], c.high[3]) == (pytest.approx(min(by_seed[3][:2])), pytest.approx(max(by_seed[3][:2])))
    assert curve(data, "baseline", "val.nothing").epochs.size == 0


def test_lr_range_and_val_metric() -> None:
    data = classification()
    epochs, low, high = lr_range(data, "exp-decay")
    assert list(epochs) == [1, 2, 3, 4] and np.all(low < high)
    assert lr_range(data, "baseline")[0].size == 0
    assert val_metric(data) == "val.accuracy"
    assert val_metric(ablation({"b": [0.5]}, metric="test.r2", regression=True)) == "val.r2"


def test_plots_draw_every_panel() -> None:
    from dltune.report import plots

    data = classification()
    fig = plots.learning_curves(data)
    assert [ax.get_title() for ax in fig.axes] == ["train loss", "validation loss", "validation accuracy"]
    assert all(len(ax.lines) == len(data.variants) for ax in fig.axes)
    lr_ax, batch_ax = plots.schedules(data).axes
    assert lr_ax.get_yscale() == "log" and batch_ax.get_ylabel() == "examples per step"
    (bars,) = plots.metric_bars(data, compare(data)).axes
    assert len(bars.patches) == len(data.variants)
    assert any(line.get_linestyle() == "--" for line in bars.lines)  # the baseline
    assert plots.to_png(fig)[:8] == b"\x89PNG\r\n\x1a\n"


# --- the HTML report --------------------------------------------------------------------------------------------

class _Page(HTMLParser):
    """Collects tags with their attributes, the text, and the cells of #results."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.rows: list[list[tuple[str, str]]] = []  # (class, text) per cell of #results' body
        self._in_results = self._in_body = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if tag == "table" and a.get("id") == "results":
            self._in_results = True
        elif self._in_results and tag == "tbody":
            self._in_body = True
        elif self._in_body and tag == "tr":
            self.rows.append([])
        elif self._in_body and tag == "td":
            self.rows[-1].append((a.get("class", ""), ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_results = self._in_body = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_body and self.rows and self.rows[-1]:
            cls, text = self.rows[-1][-1]
            self.rows[-1][-1] = (cls, text + data)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[AblationData, Path]:
    data = classification()
    return data, write_report(data, compare(data), tmp_path_factory.mktemp("report") / "sub" / "report.html")


def test_report_has_the_table_and_three_embedded_plots(report: tuple[AblationData, Path]) -> None:
    data, path = report
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert [cells[0][1] for cells in page.rows] == [v.name for v in data.variants]
    assert all(len(cells) == len(columns(data.metric)) for cells in page.rows)
    images = [a for tag, a in page.tags if tag == "img"]
    assert sorted(a["data-plot"] for a in images) == ["learning-curves", "metric", "schedules"]
    for a in images:
        assert a["alt"] and a["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(a["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    delta = [cells[5] for cells in page.rows]
    assert "sig" in delta[1][0] and "better" in delta[1][0]  # exp-decay, p < 0.05
    assert "sig" not in delta[3][0] and delta[2][1] == "0"  # lr-0.1 not significant; workers-2 a no-op


def test_report_loads_nothing_from_outside(report: tuple[AblationData, Path]) -> None:
    _, path = report
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    links = [(tag, k, v) for tag, a in page.tags for k, v in a.items() if k in ("src", "href", "srcset", "data")]
    assert links and all(v.startswith("data:") for _, _, v in links)
    assert not [tag for tag, _ in page.tags if tag in ("script", "link", "iframe", "object", "embed")]
    html = path.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html and "@import" not in html and "url(" not in html


def test_report_escapes_text_and_shows_environment_and_config(report: tuple[AblationData, Path]) -> None:
    _, path = report
    html = path.read_text(encoding="utf-8")
    assert "<ablation>" not in html and "&lt;ablation&gt; &amp; co" in html
    page = _Page()
    page.feed(html)
    text = "".join(page.text)
    assert "Ablation: seed-mnist <ablation> & co" in text
    assert "0123abc+dirty" in text and "torch_threads" in text
    assert 'name = "mnist-5k"' in text
    assert "Welch" in text and "not an effect size" in text


def test_report_of_a_regression_with_lower_is_better(tmp_path: Path) -> None:
    data = ablation({"baseline": [0.20, 0.21, 0.22], "better": [0.10, 0.11, 0.12], "one-seed": [0.3]},
                    metric="test.mse", higher_is_better=False, regression=True, mode="cumulative")
    html = write_report(data, compare(data), tmp_path / "r.html").read_text(encoding="utf-8")
    assert "lower is better" in html and "test.mse mean ± std</th>" in html
    assert 'class="num delta sig better"' in html and "Cumulative mode" in html


def test_report_without_validation_or_any_metric_still_renders(tmp_path: Path) -> None:
    data = ablation({"baseline": [None, None], "other": [None]})
    data = AblationData(data.study, data.metric, True, data.mode, data.seeds, data.variants, data.results)
    rows = compare(data)
    assert [r.mean for r in rows] == [None, None]
    html = write_report(data, rows, tmp_path / "r.html").read_text(encoding="utf-8")
    assert html.count('src="data:image/png;base64,') == 3 and "not recorded" in html.lower()


@pytest.mark.parametrize(("n", "text"), [(0, "0 seeds"), (1, "1 seed"), (3, "3 seeds"), (1200, "1,200 seeds")])
def test_plural(n: int, text: str) -> None:
    from dltune.report.cells import plural

    assert plural(n, "seed") == text
    assert plural(n, "analysis", "analyses").endswith("analysis" if n == 1 else "analyses")


def test_a_report_of_one_seed_says_seed_not_seeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dltune.cli.report_cmd import show

    data = ablation({"baseline": [0.90], "other": [0.92]})
    assert show(data, tmp_path, as_json=False) == 0
    terminal = " ".join(capsys.readouterr().out.split())
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    for text in (terminal, html):
        assert "1 seed" in text and "1 seeds" not in text
    assert "<b>2 variants</b>" in html


def test_an_interval_never_leaves_the_metrics_range() -> None:
    # two seeds far apart: the t interval (12.7 × the standard error) runs far past 100% and below 0
    data = ablation({"baseline": [0.99, 0.95], "wide": [0.05, 0.09]})
    base, wide = compare(data)
    assert base.ci_clipped and base.ci_high == 1.0 and 0 < base.ci_low < base.mean
    assert wide.ci_clipped and wide.ci_low == 0.0 and wide.mean < wide.ci_high < 1.0
    assert rows_to_json([base])[0]["ci_high"] == 1.0 and rows_to_json([base])[0]["ci_clipped"] is True
    assert "| 71.59 – 100.00 (clipped) |" in markdown_table([base, wide], data.metric)
    assert "0.00 – 32.41 (clipped)" in markdown_table([base, wide], data.metric)
    fig = plots.metric_bars(data, [base, wide])
    bottom, top = fig.axes[0].get_ylim()
    assert bottom >= 0.0 and top <= 100.0
    # r2 is at most 1 but open below; mse open above: only the closed side is cut
    r2 = compare(ablation({"baseline": [0.99, 0.20]}, metric="test.r2", regression=True))[0]
    assert r2.ci_high == 1.0 and r2.ci_low < -1.0 and r2.ci_clipped
    tight = compare(ablation({"baseline": [0.90, 0.91, 0.92]}))[0]
    assert not tight.ci_clipped and tight.ci_high < 1.0
