"""The HTML report in a real browser (headless Chromium): table and plots render, and nothing is fetched."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dltune.report import compare, write_report
from report_data import classification

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is a test dependency: pip install -e '.[test]'")

CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic"]


@pytest.fixture(scope="session")
def chromium() -> str:
    """The system Chromium, installed from Debian's archive when missing and we are root."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed, and installing it needs root and apt-get")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=900,
                              env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if done.returncode != 0:
            pytest.skip(f"could not install chromium ({' '.join(command)} exited {done.returncode}): "
                        f"{done.stderr.strip()[-300:]}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get installed chromium, but no chromium is on PATH")
    return found


@contextmanager
def offline_page(chromium: str) -> Iterator[tuple[object, list[str], list[str]]]:
    """A headless Chromium page, with every URL it requests and every error it reports recorded."""
    requested: list[str] = []
    errors: list[str] = []  # console errors: a blocked or failed load, a policy violation
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda request: requested.append(request.url))
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            yield page, requested, errors
        finally:
            browser.close()


def test_report_renders_offline(chromium: str, tmp_path: Path) -> None:
    data = classification()
    path = write_report(data, compare(data), tmp_path / "report.html")
    page_url = path.resolve().as_uri()
    with offline_page(chromium) as (page, requested, errors):
        page.goto(page_url, wait_until="load")
        rows = page.locator("#results tbody tr")
        assert rows.count() == len(data.variants)
        assert page.locator("#results thead th").count() == 10
        assert rows.nth(1).locator("td").first.inner_text().strip() == "exp-decay"
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.dataset.plot, e.complete, e.naturalWidth, e.naturalHeight])")
        assert sorted(plot for plot, *_ in images) == ["learning-curves", "metric", "schedules"]
        for plot, complete, width, height in images:
            assert complete and width > 0 and height > 0, f"plot {plot} did not decode"
        assert page.title() == f"Ablation: {data.study}"
    assert page_url in requested
    outside = [url for url in requested if url != page_url and not url.startswith("data:")]
    assert not outside, f"the report requested {outside}"
    assert not errors, f"the browser reported {errors}"
