"""The search report: top trials in the objective's direction, the figures' data, and the HTML page (text, every
plot inline, nothing external), also rendered in headless Chromium."""

from __future__ import annotations

import base64
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dltune.study.records import TrialRecord, TuneData
from dltune.report import tune_data
from dltune.report.tune_report import render_tune, top_trials, write_tune_report
from report_data import CONFIG_TOML, ENVIRONMENT
from report_data import history as epoch_history

try:  # the browser check reuses the ablation report's launcher; without playwright only that check is skipped
    from test_report_browser import chromium, offline_page, sync_api  # noqa: F401  (chromium: a fixture)
except pytest.skip.Exception:
    sync_api = None

# final val.accuracy of the complete trials, written out so that the expected order below is known by hand;
# trials 1 and 15 tie (the lower number ranks first), trial 16 completed with a NaN (no value: never ranked)
ACCURACY = {0: 0.912, 1: 0.940, 2: 0.951, 4: 0.887, 7: 0.962, 8: 0.905, 10: 0.948, 12: 0.921, 13: 0.958,
            14: 0.899, 15: 0.940, 16: math.nan}
BEST_FIRST = [7, 13, 2, 10, 1, 15, 12, 0, 8, 14]  # the top 10 by accuracy, highest first
LOWEST_FIRST = [4, 14, 8, 0, 12, 1, 15, 10, 2, 13]  # the top 10 when the same numbers are minimized
# ms per example; with ACCURACY (maximize) and latency (minimize) the front, found by hand, is:
LATENCY = {0: 0.020, 1: 0.011, 2: 0.035, 4: 0.008, 7: 0.060, 8: 0.015, 10: 0.030, 12: 0.012, 13: 0.041,
           14: 0.009, 15: 0.025, 16: 0.010}
FRONT = [1, 2, 4, 7, 10, 13, 14]
PRUNED, FAILED, RUNNING = (3, 6, 9), 5, 11
ERROR = "RuntimeError: shape mismatch <1x64 and 128x10> & co"
SCHEDULES = ["cosine", "constant", "exponential"]
HIDDEN = [[128, 64], [256], [64, 64, 32]]
BEST_TOML = '[optim]\nname = "adam"\nlr = 0.00316\n\n[schedule]\nname = "cosine"\n'


def _trial(number: int, objectives: list[str]) -> TrialRecord:
    params: dict[str, Any] = {"optim.lr": 10 ** (-4 + 3 * ((number * 7) % 17) / 16),  # 1e-4 .. 1e-1
                              "schedule.name": SCHEDULES[number % 3], "model.hidden": HIDDEN[number % 4 % 3]}
    if number % 2:
        params["optim.weight_decay"] = 1e-4 * number  # only sampled by some trials, as a conditional entry
    if number in ACCURACY:
        acc = ACCURACY[number]
        values = [acc, LATENCY[number]][:len(objectives)]
        epochs = epoch_history(acc if math.isfinite(acc) else 0.9, epochs=5, lr=params["optim.lr"], seed=number)
        return TrialRecord(number, "COMPLETE", values, params, epochs, {"accuracy": acc}, 3.0, 52_000)
    if number in PRUNED:
        epochs = epoch_history(0.6, epochs=5, seed=number)[:2]
        return TrialRecord(number, "PRUNED", None, params, epochs, {}, 1.2, 52_000, pruned_at=2)
    if number == FAILED:
        return TrialRecord(number, "FAIL", None, params, [], {}, None, None, error=ERROR)
    assert number == RUNNING
    return TrialRecord(number, "RUNNING", None, params, epoch_history(0.9, epochs=5)[:1], {}, None, None)


def search(objectives: list[str] | None = None, directions: list[str] | None = None) -> TuneData:
    """17 trials: 12 complete (one with a NaN value), 3 pruned after 2 of 5 epochs, 1 failed, 1 running."""
    objectives = objectives or ["val.accuracy"]
    directions = directions or ["maximize"] * len(objectives)
    several = len(objectives) > 1
    return TuneData(
        study="mnist <search> & co", objectives=objectives, directions=directions,
        trials=[_trial(n, objectives) for n in range(17)], best=FRONT if several else [7],
        importances=None if several else {"schedule.name": 0.18, "optim.lr": 0.71, "model.hidden": 0.11},
        environment=dict(ENVIRONMENT),
        config_toml=CONFIG_TOML + '\n[search]\ntrials = 17\n\n[search.space]\n"optim.lr" = { low = 1e-4, '
                                  'high = 0.1, log = true }\n',
        best_config_toml=BEST_TOML, sampler="TPESampler", pruner="MedianPruner", top_k=10)


@pytest.fixture(scope="module")
def single() -> str:
    return render_tune(search())


@pytest.fixture(scope="module")
def pareto() -> str:
    return render_tune(search(["val.accuracy", "latency"], ["maximize", "minimize"]))


def _rows(html: str) -> list[str]:
    body = re.search(r'<table id="trials">.*?<tbody>(.*?)</tbody>', html, re.S)
    assert body, "no trials table"
    return re.findall(r"<tr[^>]*>.*?</tr>", body.group(1), re.S)


def _plots(html: str) -> dict[str, bytes]:
    found = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"[^>]*data-plot="([\w-]+)"', html)
    assert len(found) == html.count("<img"), "an image is not an inline PNG"
    return {key: base64.b64decode(data) for data, key in found}


# --- data ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("objective", "direction", "expected"), [
    ("val.accuracy", "maximize", BEST_FIRST), ("val.loss", "minimize", LOWEST_FIRST)])
def test_top_trials_follow_the_direction(objective: str, direction: str, expected: list[int]) -> None:
    data = search([objective], [direction])
    assert [t.number for t in top_trials(data, 10)] == expected
    assert [t.number for t in top_trials(data, 3)] == expected[:3]
    assert {t.state for t in top_trials(data, 100)} == {"COMPLETE"}
    assert len(top_trials(data, 100)) == 11  # 12 complete, less the NaN


def test_history_marks_pruned_trials_and_the_best_so_far() -> None:
    info = tune_data.history(search())
    assert list(info.pruned_numbers) == list(PRUNED)
    assert np.allclose(info.pruned_values, 54.0)  # history(0.6, epochs=5)[:2] ends at 0.6 - 0.1 * 3/5, in %
    expected = np.maximum.accumulate([100 * ACCURACY[n] for n in sorted(ACCURACY) if n != 16])
    assert np.allclose(info.step_values[:-1], expected)
    assert info.step_numbers[-1] == 16 and info.step_values[-1] == pytest.approx(96.2)  # runs on to the last trial
    assert list(info.best_numbers) == [7]

    lowest = tune_data.history(search(["val.loss"], ["minimize"]))
    assert np.all(np.diff(lowest.step_values) <= 0)


def test_slices_pick_axis_scales_and_category_labels() -> None:
    cuts = {s.param: s for s in tune_data.slices(search())}
    assert list(cuts)[:3] == ["optim.lr", "schedule.name", "model.hidden"]  # by importance
    assert cuts["optim.lr"].scale == "log" and cuts["optim.weight_decay"].scale == "linear"
    assert cuts["schedule.name"].categories == ["constant", "cosine", "exponential"]
    assert cuts["model.hidden"].categories == ["[64, 64, 32]", "[128, 64]", "[256]"]
    assert len(cuts["optim.weight_decay"].numbers) == sum(1 for n in ACCURACY if n % 2 and n != 16)
    assert len(tune_data.slices(search(), limit=2)) == 2
    assert cuts["optim.lr"].xlabel == "optim.lr (log scale)"

    # layer widths sampled freely: too many distinct lists for categories, drawn by their sum instead
    data = search()
    data = replace(data, trials=[replace(t, params={**t.params, "model.hidden": [32 + t.number, 16]})
                                 for t in data.trials])
    hidden = {s.param: s for s in tune_data.slices(data)}["model.hidden"]
    assert hidden.scale == "linear" and hidden.xlabel == "model.hidden (sum of widths)"
    assert list(hidden.x) == [48 + n for n in hidden.numbers]


def test_layer_importances_rank_their_list() -> None:
    data = replace(search(), importances={"optim.lr": 0.2, "model.hidden.depth": 0.3, "model.hidden[0]": 0.3,
                                          "schedule.name": 0.2})
    assert tune_data.searched_params(data)[:2] == ["model.hidden", "optim.lr"]


def test_pareto_front_is_sorted_along_the_first_objective() -> None:
    assert tune_data.pareto(search()) is None
    front = tune_data.pareto(search(["val.accuracy", "latency"], ["maximize", "minimize"]))
    assert front is not None
    assert sorted(front.front_numbers) == FRONT and np.all(np.diff(front.front_x) >= 0)
    assert front.x.size == 11


# --- HTML ---------------------------------------------------------------------------------------------------------


def test_single_objective_report(single: str) -> None:
    rows = _rows(single)
    assert len(rows) == 10
    assert rows[0].startswith('<tr class="best">') and '<td class="num trial">7</td>' in rows[0]
    assert sum('class="best"' in r for r in rows) == 1
    assert "[128, 64]" in single and "<th>model.hidden</th>" in single and '<th class="num">optim.lr</th>' in single
    plots = _plots(single)
    assert sorted(plots) == ["history", "importances", "learning-curves", "slices"]
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in plots.values())
    assert "<b>12</b> complete · <b>3</b> pruned · <b>1</b> failed · <b>1</b> running" in single
    assert f"<b>{12 * 5 + 3 * 2 + 1}</b> epochs trained" in single
    assert "trial <b>5</b>" in single and "shape mismatch &lt;1x64 and 128x10&gt; &amp; co" in single
    assert "mnist &lt;search&gt; &amp; co" in single and "<search>" not in single
    assert "dltune train best.toml" in single and 'lr = 0.00316' in single
    assert "[search.space]" in single and "TPESampler" in single and "MedianPruner" in single


@pytest.mark.parametrize("fixture", ["single", "pareto"])
def test_report_is_self_contained(fixture: str, request: pytest.FixtureRequest) -> None:
    html = request.getfixturevalue(fixture)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "Content-Security-Policy" in html and "default-src 'none'" in html


def test_two_objective_report_has_the_pareto_front(pareto: str) -> None:
    rows = _rows(pareto)
    assert len(rows) == 10
    best = [int(m.group(1)) for r in rows if 'class="best"' in r and (m := re.search(r'"num trial">(\d+)<', r))]
    assert sorted(best) == [n for n in FRONT if n != 4]  # trial 4 ranks 11th by accuracy
    assert sorted(_plots(pareto)) == ["history", "learning-curves", "pareto", "slices"]  # no importances
    assert "latency (ms per example)" in pareto and "Pareto front: trials <b>7, 13, 2, 10, 1, 14, 4</b>" in pareto


def test_report_of_a_search_without_a_complete_trial(tmp_path: Path) -> None:
    data = search()
    data = replace(data, trials=[t for t in data.trials if t.state != "COMPLETE"], best=[], importances=None,
                   best_config_toml=None)
    html = write_tune_report(data, tmp_path / "sub" / "report.html").read_text(encoding="utf-8")
    assert 'id="trials"' not in html and "No trial has completed" in html
    assert sorted(_plots(html)) == ["history"]
    assert "<b>0</b> complete" in html


def test_one_trial_and_one_epoch_are_counted_in_the_singular() -> None:
    data = search()
    one = next(t for t in data.trials if t.number == 7)
    html = render_tune(replace(data, trials=[replace(one, epochs=one.epochs[:1])]))
    assert "<b>1</b> trial:" in html and "<b>1</b> epoch trained" in html
    assert "The best complete trial by val.accuracy" in html
    assert "1</b> trials" not in html and "1</b> epochs" not in html


# --- browser ------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(sync_api is None, reason="playwright is a test dependency: pip install -e '.[test]'")
def test_reports_render_offline(chromium: str, tmp_path: Path, single: str, pareto: str) -> None:
    paths = [tmp_path / "one.html", tmp_path / "two.html"]
    for path, html in zip(paths, [single, pareto], strict=True):
        path.write_text(html, encoding="utf-8")
    urls = [path.resolve().as_uri() for path in paths]
    seen = []
    with offline_page(chromium) as (page, requested, errors):
        for url in urls:
            page.goto(url, wait_until="load")
            assert page.locator("#trials tbody tr").count() == 10
            assert page.locator("#trials tbody tr.best td.trial").first.inner_text().strip() == "7"
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => [e.dataset.plot, e.complete, e.naturalWidth, e.naturalHeight])")
            for plot, complete, width, height in images:
                assert complete and width > 0 and height > 0, f"plot {plot} did not decode"
            seen.append(sorted(plot for plot, *_ in images))
            assert page.title() == "Search: mnist <search> & co"
    assert seen == [["history", "importances", "learning-curves", "slices"],
                    ["history", "learning-curves", "pareto", "slices"]]
    outside = [url for url in requested if url not in urls and not url.startswith("data:")]
    assert not outside, f"the report requested {outside}"
    assert not errors, f"the browser reported {errors}"


def test_the_trials_table_lists_the_searchs_top_k() -> None:
    for k in (3, 12):
        html = render_tune(replace(search(), top_k=k))
        rows = html.split('id="trials"')[1].split("</tbody>")[0].count("<tr")
        assert rows == 1 + min(k, 11)  # the head, then k complete trials (11 have a value)
