"""The report of `dltune ensemble` from results read or built by hand (no training): the rows and their cells, the
difference with its interval, the data behind the plots and what they draw, the terminal table, and the page in a
real browser with nothing fetched."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from dltune.ensembles.run import EnsembleResult
from dltune.report.ensemble_report import (by_count, cells, columns, difference_text, lines, plot_members,
                                           plot_reliability, publish, reliability, render, terminal_table, verdict)

try:  # the browser check reuses the ablation report's launcher; without playwright only that check is skipped
    from test_report_browser import chromium, offline_page, sync_api  # noqa: F401  (chromium: a fixture)
except pytest.skip.Exception:
    sync_api = None

# EnsembleResult.to_dict() of a real `dltune ensemble` (greedy, the top 5 trials of a search)
SAMPLE = """\
{"source":"out","out_dir":"ens-sample","method":"greedy","task":"classification",
"ranked_by":"val.accuracy (maximize)","members":[{"name":"trial-0","run_dir":"out/trials/trial-0",
"weight":0.14285714285714285,"ranked_value":0.9513888888888888,"val":{"accuracy":0.9513888888888888,
"log_loss":0.1859859220675778},"test":{"accuracy":0.9415041782729805,"log_loss":0.22916796264404218},
"folder":"members/trial-0"},{"name":"trial-5","run_dir":"out/trials/trial-5","weight":0.0,"ranked_value":0.9375,
"val":{"accuracy":0.9375,"log_loss":0.29991424780736536},"test":{"accuracy":0.935933147632312,
"log_loss":0.3361269996689522},"folder":null},{"name":"trial-4","run_dir":"out/trials/trial-4",
"weight":0.8571428571428571,"ranked_value":0.9305555555555556,"val":{"accuracy":0.9305555555555556,
"log_loss":0.17889791178031167},"test":{"accuracy":0.9415041782729805,"log_loss":0.2025869758884109},
"folder":"members/trial-4"},{"name":"trial-1","run_dir":"out/trials/trial-1","weight":0.0,
"ranked_value":0.8958333333333334,"val":{"accuracy":0.8958333333333334,"log_loss":0.6348452921499749},
"test":{"accuracy":0.871866295264624,"log_loss":0.6782000472167634},"folder":null},{"name":"trial-2",
"run_dir":"out/trials/trial-2","weight":0.0,"ranked_value":0.8958333333333334,
"val":{"accuracy":0.8958333333333334,"log_loss":0.648306645782162},"test":{"accuracy":0.8690807799442897,
"log_loss":0.6916717018626756},"folder":null}],"test":{"accuracy":0.9415041782729805,
"log_loss":0.20377486858850194},"best_single":{"name":"trial-0","test":{"accuracy":0.9415041782729805,
"log_loss":0.22916796264404218},"val":{"accuracy":0.9513888888888888,"log_loss":0.1859859220675778}},
"difference":{"metric":"accuracy","unit":"points","difference":0.0,"ci_low":-1.392757660167131,
"ci_high":1.392757660167131,"resamples":5000,"examples":359},"by_members":[{"k":1,
"test":{"accuracy":0.9415041782729805,"log_loss":0.22916796264404218},"val":{"accuracy":0.9513888888888888,
"log_loss":0.1859859220675778}},{"k":2,"test":{"accuracy":0.9415041782729805,"log_loss":0.22916796264404218},
"val":{"accuracy":0.9513888888888888,"log_loss":0.1859859220675778}},{"k":3,"test":{"accuracy":0.9415041782729805,
"log_loss":0.20377486858850194},"val":{"accuracy":0.9305555555555556,"log_loss":0.17863863546423678}},{"k":4,
"test":{"accuracy":0.9415041782729805,"log_loss":0.20377486858850194},"val":{"accuracy":0.9305555555555556,
"log_loss":0.1786386354642368}},{"k":5,"test":{"accuracy":0.9415041782729805,"log_loss":0.20377486858850194},
"val":{"accuracy":0.9305555555555556,"log_loss":0.1786386354642368}}],
"calibration":{"ensemble":{"bins":[{"low":0.30000000000000004,"high":0.4,"confidence":0.34342538884707857,
"accuracy":0.3333333333333333,"count":3},{"low":0.4,"high":0.5,"confidence":0.4440092242189816,"accuracy":0.75,
"count":4},{"low":0.5,"high":0.6000000000000001,"confidence":0.55173288498606,"accuracy":0.3333333333333333,
"count":9},{"low":0.6000000000000001,"high":0.7000000000000001,"confidence":0.6672981702364408,
"accuracy":0.6923076923076923,"count":13},{"low":0.7000000000000001,"high":0.8,"confidence":0.7561745008269509,
"accuracy":0.7692307692307693,"count":13},{"low":0.8,"high":0.9,"confidence":0.8629198794241074,"accuracy":1.0,
"count":22},{"low":0.9,"high":1.0,"confidence":0.9812418383201155,"accuracy":0.9830508474576272,"count":295}],
"ece":0.020234292086215445},"best_single":{"bins":[{"low":0.30000000000000004,"high":0.4,
"confidence":0.3558422327041626,"accuracy":0.6666666666666666,"count":3},{"low":0.4,"high":0.5,
"confidence":0.44069429486989975,"accuracy":0.5,"count":8},{"low":0.5,"high":0.6000000000000001,
"confidence":0.5502324321053245,"accuracy":0.6363636363636364,"count":11},{"low":0.6000000000000001,
"high":0.7000000000000001,"confidence":0.6686960617701213,"accuracy":0.9333333333333333,"count":15},
{"low":0.7000000000000001,"high":0.8,"confidence":0.7565982271643246,"accuracy":0.6470588235294118,"count":17},
{"low":0.8,"high":0.9,"confidence":0.8646701879617644,"accuracy":0.975609756097561,"count":41},{"low":0.9,
"high":1.0,"confidence":0.9764876435651924,"accuracy":0.9848484848484849,"count":264}],
"ece":0.04162082316815689}},"details":{"picks":[2,2,2,0,2,2,2],"val_loss_by_step":[0.178898,0.178898,0.178898,
0.178775,0.178678,0.178646,0.178639,0.178642,0.17865,0.178661,0.178657,0.178646,0.17864,0.178639,0.17864,0.178642,
0.178646,0.178646,0.178642,0.178639,0.178639,0.178639,0.17864,0.178642,0.178642]},"seconds":2.1775994199999786}
"""
EXTERNAL = re.compile(r"""(?:src|href|url)\s*[=(]\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def classification() -> EnsembleResult:
    return EnsembleResult(**json.loads(SAMPLE))


def _scores(mse: float, r2: float) -> dict[str, float]:
    return {"mse": mse, "mae": mse / 2, "r2": r2}


def regression() -> EnsembleResult:
    """Three members ranked by val.mse; b is best on validation; the mean of all three beats it on test."""
    members = [{"name": n, "run_dir": f"out/trials/{n}", "weight": 1 / 3, "ranked_value": v, "val": _scores(v, r),
                "test": _scores(t, r - 0.01), "folder": f"members/{n}"}
               for n, v, t, r in (("b", 0.20, 0.22, 0.80), ("a", 0.25, 0.24, 0.76), ("c", 0.30, 0.31, 0.70))]
    by_members = [{"k": 1, "test": _scores(0.22, 0.79), "val": _scores(0.20, 0.80)},
                  {"k": 2, "test": _scores(0.21, 0.80), "val": _scores(0.19, 0.81)},
                  {"k": 3, "test": _scores(0.205, float("nan")), "val": _scores(0.185, 0.82)}]
    return EnsembleResult(
        source="runs/housing", out_dir="runs/housing-ensemble", method="mean", task="regression",
        ranked_by="val.mse (minimize)", members=members, test=_scores(0.205, 0.81),
        best_single={"name": "b", "test": _scores(0.22, 0.79), "val": _scores(0.20, 0.80)},
        difference={"metric": "mse", "unit": "mse", "difference": -0.015, "ci_low": -0.0301, "ci_high": -0.0012,
                    "resamples": 5000, "examples": 412},
        by_members=by_members, seconds=3.5)


# --- data ---------------------------------------------------------------------------------------------------------


def test_lines_put_the_ensemble_first_and_mark_the_best_single_member() -> None:
    r = classification()
    shown = lines(r)
    assert [ln.name for ln in shown] == ["ensemble (greedy)", "trial-0", "trial-5", "trial-4", "trial-1", "trial-2"]
    assert [ln.best for ln in shown] == [False, True, False, False, False, False]
    assert shown[0].ensemble and shown[0].weight is None
    assert shown[0].val == r.by_members[-1]["val"]  # the method on all members is the ensemble
    assert lines(replace(r, by_members=[]))[0].val is None


def test_cells_show_accuracy_in_percent_and_the_rest_to_four_digits() -> None:
    r = classification()
    assert [c.name for c in columns(r)] == ["model", "weight", "val accuracy (%)", "test accuracy (%)",
                                            "test log loss"]
    ensemble, best, *_ = lines(r)
    assert cells(r, ensemble) == ["ensemble (greedy)", "—", "93.06", "94.15", "0.2038"]
    assert cells(r, best) == ["trial-0 \u2605", "0.143", "95.14", "94.15", "0.2292"]
    g = regression()
    assert [c.name for c in columns(g)] == ["model", "weight", "val mse", "test mse", "test R²"]
    assert cells(g, lines(g)[1]) == ["b \u2605", "0.333", "0.2", "0.22", "0.79"]


def test_difference_text_gives_the_interval_in_the_metric_s_units() -> None:
    assert difference_text(classification()) == (
        "ensemble − best single (trial-0), test accuracy: +0.00 points, 95% paired bootstrap interval "
        "[−1.39, +1.39] (5,000 resamples of 359 test examples): the interval holds 0: no difference shown on "
        "these test examples")
    assert difference_text(regression()) == (
        "ensemble − best single (b), test mse: −0.015, 95% paired bootstrap interval [−0.0301, −0.0012] "
        "(5,000 resamples of 412 test examples): the ensemble is better")


@pytest.mark.parametrize(("metric", "low", "high", "expected"), [
    ("accuracy", 0.5, 2.0, "the ensemble is better"),
    ("accuracy", -2.0, -0.5, "the best single member is better"),
    ("accuracy", -1.0, 1.0, "the interval holds 0"),
    ("accuracy", 0.0, 1.0, "the interval holds 0"),
    ("mse", -0.03, -0.01, "the ensemble is better"),  # lower mse is better
    ("mse", 0.01, 0.03, "the best single member is better"),
    ("mse", -0.01, 0.01, "the interval holds 0"),
])
def test_verdict_follows_the_interval_and_the_metric_s_direction(metric: str, low: float, high: float,
                                                                 expected: str) -> None:
    r = replace(regression(), difference={**regression().difference, "metric": metric, "ci_low": low,
                                          "ci_high": high})
    assert verdict(r).startswith(expected)


def test_curves_against_the_member_count() -> None:
    r = classification()
    accuracy = by_count(r, "accuracy")
    assert accuracy.k == [1, 2, 3, 4, 5]
    assert accuracy.test == pytest.approx([94.150418] * 5)
    assert accuracy.val == pytest.approx([95.138889, 95.138889, 93.055556, 93.055556, 93.055556])
    assert accuracy.best_single == pytest.approx(94.150418)
    assert by_count(r, "log_loss").test[2] == pytest.approx(0.20377487)
    g = regression()
    assert by_count(g, "r2").test == [0.79, 0.80, None]  # NaN: not a point
    no_val = replace(g, by_members=[{**b, "val": None} for b in g.by_members])
    assert by_count(no_val, "mse").val == [None, None, None]


def test_reliability_keeps_each_bin_and_the_ece() -> None:
    best, ensemble = reliability(classification())
    assert (best.label, ensemble.label) == ("best single (trial-0)", "ensemble")
    assert sum(ensemble.counts) == sum(best.counts) == 359  # every test example in some bin
    assert ensemble.centers[-1] == pytest.approx(0.95) and ensemble.accuracy[-1] == pytest.approx(0.98305085)
    assert ensemble.ece == pytest.approx(0.0202343)
    assert reliability(regression()) == []


# --- drawing ------------------------------------------------------------------------------------------------------


def test_plots_draw_the_diagonal_the_ece_and_the_best_single_reference() -> None:
    r = classification()
    fig = plot_reliability(reliability(r))
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["perfectly calibrated", "best single (trial-0): ECE 4.16%", "ensemble: ECE 2.02%"]
    diagonal = fig.axes[0].lines[0]
    assert list(diagonal.get_xdata()) == [0, 1] and list(diagonal.get_ydata()) == [0, 1]
    fig = plot_members([by_count(r, "accuracy"), by_count(r, "log_loss")])
    flat = [ln for ln in fig.axes[0].lines if ln.get_label() == "best single, test"]
    assert len(flat) == 1 and list(flat[0].get_ydata()) == pytest.approx([94.150418] * 2)
    assert [ln.get_label() for ln in fig.axes[1].lines] == ["top k, test", "top k, validation", "best single, test"]


# --- layouts ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [classification, regression])
def test_terminal_table_has_a_row_per_member_plus_the_ensemble(make) -> None:
    from rich.console import Console

    r = make()
    table = terminal_table(r)
    assert table.row_count == len(r.members) + 1 and len(table.columns) == 5
    console = Console(record=True, width=300)
    console.print(table)
    text = console.export_text()
    words = " ".join(text.split())  # the title and caption wrap at the table's width
    assert f"ensemble: {r.method} of {len(r.members)} members, ranked by {r.ranked_by}" in words
    assert difference_text(r) in words
    assert sum(line.count("\u2605") for line in text.splitlines() if line.startswith("│")) == 1


def test_an_ablation_variant_s_seeds_are_not_said_to_be_ranked() -> None:
    r = regression()
    r = replace(r, ranked_by="ablation variant 'wide', every seed",
                members=[{**m, "ranked_value": None} for m in r.members])
    from rich.console import Console

    console = Console(record=True, width=300)
    console.print(terminal_table(r))
    assert "ensemble: mean of 3 members, ablation variant 'wide', every seed" in " ".join(console.export_text().split())


def _images(html: str) -> dict[str, bytes]:
    found = re.findall(r'<img src="data:image/png;base64,([^"]+)"[^>]*data-plot="([^"]+)"', html)
    return {key: base64.b64decode(data) for data, key in found}


def test_publish_writes_a_self_contained_page_of_a_classification(tmp_path: Path) -> None:
    r = classification()
    path = publish(r, tmp_path / "out")
    assert path == tmp_path / "out" / "report.html"
    html = path.read_text()
    assert html == render(r)
    body = html.split('<table id="results">')[1].split("</tbody>")[0]
    assert body.count("<tr") == 1 + 1 + 5  # the header's, the ensemble's and one per member
    assert body.count('class="ensemble"') == 1 and body.count('class="best"') == 1
    assert '<td class="num">94.15</td>' in body and '<td class="name">trial-0 \u2605</td>' in body
    difference = html.split('<p id="difference">')[1].split("</p>")[0]
    assert "+0.00 points, 95% paired bootstrap interval [−1.39, +1.39]" in difference
    images = _images(html)
    assert list(images) == ["reliability", "members"]
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in images.values())
    assert not EXTERNAL.search(html)
    assert "Content-Security-Policy" in html
    assert "val_loss_by_step" in html.split("<h2>Settings</h2>")[1]  # the method's details


def test_publish_of_a_regression_has_no_reliability_diagram(tmp_path: Path) -> None:
    r = regression()
    html = publish(r, tmp_path).read_text()
    assert list(_images(html)) == ["members"]
    assert "<h2>Calibration</h2>" not in html
    assert "test mse: −0.015, 95% paired bootstrap interval [−0.0301, −0.0012]" in html
    assert '<th class="num">test R²</th>' in html
    assert html.split('<table id="results">')[1].split("</tbody>")[0].count("<tr") == 1 + 1 + 3
    assert not EXTERNAL.search(html)


# --- browser ------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(sync_api is None, reason="playwright is a test dependency: pip install -e '.[test]'")
def test_report_renders_offline(chromium: str, tmp_path: Path) -> None:
    r = classification()
    url = publish(r, tmp_path).resolve().as_uri()
    with offline_page(chromium) as (page, requested, errors):
        page.goto(url, wait_until="load")
        assert page.title() == "Ensemble: out"
        assert page.locator("#results tbody tr").count() == len(r.members) + 1
        assert page.locator("#results tr.best td").first.inner_text().strip() == "trial-0 \u2605"
        assert "[−1.39, +1.39]" in page.locator("#difference").inner_text()
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.dataset.plot, e.complete, e.naturalWidth, e.naturalHeight])")
        assert [plot for plot, *_ in images] == ["reliability", "members"]
        for plot, complete, width, height in images:
            assert complete and width > 0 and height > 0, f"plot {plot} did not decode"
    outside = [u for u in requested if u != url and not u.startswith("data:")]
    assert not outside, f"the report requested {outside}"
    assert not errors, f"the browser reported {errors}"
