"""The search report of a real population-based training search (search.pruner = "pbt"): its PBT section shows the
lineage and the schedules, and the best member's schedule per epoch as the experiment that best.toml holds and as
the run itself recorded it; the lineage draws one arrow per copy; the earlier generations are not called pruned; and
the page renders in a real browser."""

from __future__ import annotations

import html as markup
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dltune import load_config, tune
from dltune.report import pbt_data, pbt_plots
from dltune.report.tune_report import render_tune, write_tune_report
from dltune.study.records import TrialRecord, TuneData

try:  # the browser check reuses the ablation report's launcher; without playwright only that check is skipped
    from test_report_browser import chromium, offline_page, sync_api  # noqa: F401  (chromium: a fixture)
except pytest.skip.Exception:
    sync_api = None

EPOCHS = 3
KEYS = ["optim.lr", "optim.momentum"]
EXPERIMENT = {"data": {"limit": 300}, "model": {"hidden": [16]}, "optim": {"name": "sgd", "momentum": 0.9},
              "train": {"epochs": EPOCHS},
              "search": {"pruner": "pbt", "population": 4, "interval": 1,
                         "space": {"optim.lr": {"low": 1e-3, "high": 0.5, "log": True},
                                   "optim.momentum": {"low": 0.5, "high": 0.99}}}}


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> TuneData:
    return tune(load_config(EXPERIMENT), out_dir=tmp_path_factory.mktemp("pbt") / "out")


@pytest.fixture(scope="module")
def report(search: TuneData) -> str:
    return render_tune(search)


def best_trial(data: TuneData) -> TrialRecord:
    return next(t for t in data.trials if t.number == data.best[0])


def section(html: str) -> str:
    return html.split('<section id="pbt">')[1].split("</section>")[0]


def schedule_rows(html: str) -> list[tuple[bool, list[str], list[str]]]:
    """The schedule table's rows: whether marked an exploit, each cell's text, and each cell's title."""
    body = section(html).split('id="pbt-schedule"')[1].split("</tbody>")[0].split("<tbody>")[1]
    rows = []
    for row in re.findall(r"<tr[^>]*>.*?</tr>", body, re.S):
        cells = re.findall(r"<td([^>]*)>(.*?)</td>", row, re.S)
        titles = [markup.unescape(m.group(1)) if (m := re.search(r'title="([^"]*)"', attrs)) else "" for attrs, _ in
                  cells]
        rows.append(('class="exploit"' in row.split(">")[0], [markup.unescape(text) for _, text in cells], titles))
    return rows


def expected_schedule(params: dict[str, Any], epoch: int) -> dict[str, Any]:
    """The settings of an experiment during `epoch`, written out here apart from the report's code: the first
    values, then the last train.changes entry that starts at or before the epoch."""
    first = {k: v for k, v in params.items() if k != "train.changes"}
    started = [c for c in params.get("train.changes", []) if c["epoch"] <= epoch]
    last = max(started, key=lambda c: c["epoch"]) if started else {}
    return {k: last.get(k, v) for k, v in first.items()}


def test_the_search_is_a_population_with_copies(search: TuneData) -> None:
    # what every other check here needs: PBT's segments, each member to the end, and at least one copy
    assert search.pruner == "pbt"
    segments = [t for t in search.trials if t.pbt is not None]
    assert len(segments) == 4 * EPOCHS
    assert sum(t.pbt["copied_from"] is not None for t in segments) >= 1
    assert best_trial(search).state == "COMPLETE" and len(best_trial(search).epochs) == EPOCHS


def test_the_pbt_section_has_both_plots_and_the_best_schedule(search: TuneData, report: str) -> None:
    pbt = section(report)
    plots = dict(re.findall(r'src="data:image/png;base64,([^"]+)"[^>]*data-plot="([^"]+)"', pbt))
    assert sorted(plots.values()) == ["pbt-lineage", "pbt-schedules"]
    assert "dltune train best.toml" in pbt
    header = re.findall(r"<th[^>]*>(.*?)</th>", pbt.split('id="pbt-schedule"')[1].split("</thead>")[0])
    assert header[:4] == ["epoch", "trained by", *KEYS]
    assert len(schedule_rows(report)) == EPOCHS


def test_the_schedule_table_is_the_experiment_and_the_run_of_each_member(search: TuneData) -> None:
    # every member's last segment shown as if it were the best: the search's best may never have copied anyone
    copied_some = False
    for last in [t for t in search.trials if t.state == "COMPLETE"]:
        rows = schedule_rows(render_tune(replace(search, best=[last.number])))
        assert [int(texts[0]) for _, texts, _ in rows] == list(range(1, EPOCHS + 1))
        for (_, texts, titles), record in zip(rows, last.epochs, strict=True):
            shown = {key: float(titles[2 + i]) for i, key in enumerate(KEYS)}  # the exact value, in the tooltip
            assert shown == expected_schedule(last.params, int(texts[0]))  # the experiment best.toml would hold
            assert shown["optim.lr"] == pytest.approx(record["lr"])  # what the run itself trained with
        # "copied member k" exactly at the epochs where the lineage's train.changes begin, and marked there
        changed = [c["epoch"] for c in last.params.get("train.changes", [])]
        assert [int(texts[0]) for _, texts, _ in rows if texts[-1].startswith("copied member ")] == changed
        assert [int(texts[0]) for exploit, texts, _ in rows if exploit] == changed
        copied_some = copied_some or bool(changed)
    assert copied_some  # the last generation's copier, at least: otherwise the checks above had nothing to see


def test_the_lineage_draws_one_arrow_per_copy(search: TuneData) -> None:
    fig = pbt_plots.plot_lineage(pbt_data.lineage(search))
    arrows = fig.findobj(lambda artist: artist.get_gid() == pbt_plots.COPY_GID)
    copies = [t for t in search.trials if t.pbt is not None and t.pbt["copied_from"] is not None]
    assert len(arrows) == len(copies) >= 1


def test_a_members_lineage_goes_back_through_the_states_it_copied(search: TuneData) -> None:
    by_number = {t.number: t for t in search.trials}
    for last in [t for t in search.trials if t.state == "COMPLETE"]:
        info = pbt_data.lineage(replace(search, best=[last.number]))
        path = info.best_path
        assert [s.end for s in path] == list(range(1, EPOCHS + 1)) and path[-1].number == last.number
        for before, after in zip(path, path[1:], strict=False):  # each went on from the one before
            assert by_number[after.number].pbt["source"] == before.number
            assert after.copied_from == (before.member if after.member != before.member else None)
        assert sum(c.best for c in info.copies) == len(last.params.get("train.changes", []))


def test_the_schedules_plot_draws_each_key_for_every_member_and_the_best_bold(search: TuneData) -> None:
    panels = pbt_data.schedule_panels(search)
    assert [p.key for p in panels] == KEYS
    best = best_trial(search)
    for panel in panels:
        assert [line.member for line in panel.lines] == [0, 1, 2, 3]
        assert panel.best is not None
        assert list(panel.best.values[:-1]) == [expected_schedule(best.params, e)[panel.key]
                                                for e in range(1, EPOCHS + 1)]
    fig = pbt_plots.plot_schedules(panels)
    widths = [sorted(line.get_linewidth() for line in ax.get_lines()) for ax in fig.axes]
    assert all(len(w) == 5 and w[-1] > 2 * w[-2] for w in widths)  # four members, and the best's bold


def test_earlier_generations_are_segments_not_pruned_trials(search: TuneData, report: str) -> None:
    paused = sum(t.state == "PRUNED" for t in search.trials)
    assert paused == 4 * (EPOCHS - 1)
    assert f"<b>{paused}</b> PBT segments of earlier generations" in report
    assert not re.search(r"<b>\d+</b> pruned", report) and "pruned trial" not in report
    # a member's last segment holds every epoch of its lineage: the cost counts each segment's own
    assert f"<b>{4 * EPOCHS}</b> epochs trained" in report


def test_a_search_that_is_not_pbt_has_no_pbt_section(search: TuneData, tmp_path: Path) -> None:
    other = replace(search, pruner="median")
    html = write_tune_report(other, tmp_path / "report.html").read_text(encoding="utf-8")
    assert 'id="pbt"' not in html and "pbt-lineage" not in html
    assert "<b>8</b> pruned" in html


@pytest.mark.skipif(sync_api is None, reason="playwright is a test dependency: pip install -e '.[test]'")
def test_the_pbt_report_renders_offline(chromium: str, search: TuneData, tmp_path: Path) -> None:
    path = write_tune_report(search, tmp_path / "report.html")
    url = path.resolve().as_uri()
    with offline_page(chromium) as (page, requested, errors):
        page.goto(url, wait_until="load")
        assert page.locator("#pbt").is_visible()
        assert page.locator("#pbt-schedule tbody tr").count() == EPOCHS
        images = page.eval_on_selector_all(
            "#pbt img", "els => els.map(e => [e.dataset.plot, e.complete, e.naturalWidth, e.naturalHeight])")
        assert sorted(plot for plot, *_ in images) == ["pbt-lineage", "pbt-schedules"]
        for plot, complete, width, height in images:
            assert complete and width > 0 and height > 0, f"plot {plot} did not decode"
        for plot in ("pbt-lineage", "pbt-schedules"):
            assert page.locator(f'#pbt img[data-plot="{plot}"]').is_visible()
    outside = [u for u in requested if u != url and not u.startswith("data:")]
    assert not outside, f"the report requested {outside}"
    assert not errors, f"the browser reported {errors}"
