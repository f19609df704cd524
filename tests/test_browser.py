"""The exported pages in a real browser: headless Chromium, offline, opens each page of the toy model's
run and checks that every figure and attention view rendered with its data and no script failed.

Needs Debian's ``chromium`` (``/usr/bin/chromium``). Without it the test is skipped with the reason,
unless ``REQUIRE_BROWSER=1`` (set by ``.ci/run``, which installs it), where its absence is a failure.
A screenshot of each page is kept in pytest's temporary folder (its path is printed).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import nbformat
import pytest

from helpers.run import export

# Chromium as the machine allows it: no sandbox (root), no GPU, and no background connections to
# Google's services, which a closed network refuses (and which a test must not make).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    reason = "headless Chromium not found (Debian: apt install chromium); the real-browser test of the HTML pages"
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} is required here (REQUIRE_BROWSER=1)")
    pytest.skip(f"{reason} is skipped")


@pytest.fixture(scope="module")
def browser() -> Any:
    executable = chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


RENDERED = """() => ({
  figures: Array.from(document.querySelectorAll("div.suite-plotly")).map(el => ({
    drawn: el.classList.contains("js-plotly-plot") && el.querySelector(".main-svg") !== null,
    traces: (el.data || []).length,
    points: (el.data || []).reduce((n, t) => n + ((t.z || t.y || t.x || []).length || 0), 0),
  })),
  views: Array.from(document.querySelectorAll("div.suite-circuitsvis")).map(el => ({
    elements: el.querySelectorAll("*").length, text: el.innerText,
    heads: JSON.parse(el.nextElementSibling.textContent).props.attentionHeadNames,
  })),
})"""


def open_page(browser: Any, path: Path, screenshot: Path, *, timeout_ms: int = 30_000
              ) -> tuple[dict[str, Any], list[str], list[str]]:
    """Open one page, wait (up to ``timeout_ms``) until plotly has drawn every figure, and return what
    rendered, the script errors, and any request that left the file system; save a screenshot."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    fetched: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("request", lambda request: None if request.url.startswith(("file:", "data:", "blob:"))
            else fetched.append(request.url))
    page.goto(path.resolve().as_uri(), wait_until="load")
    try:
        page.wait_for_function("() => Array.from(document.querySelectorAll('div.suite-plotly'))"
                               ".every(el => el.classList.contains('js-plotly-plot'))", timeout=timeout_ms)
    except PlaywrightTimeout:
        pass  # what did render, and the errors, say why
    shown = page.evaluate(RENDERED)
    page.screenshot(path=str(screenshot))
    page.close()
    return shown, errors, fetched


@pytest.mark.slow
def test_every_exported_page_renders_offline_without_script_errors(
    browser: Any, two_task_run: tuple[Path, list[str], int], tmp_path_factory: pytest.TempPathFactory
) -> None:
    notebooks, _, code = two_task_run
    assert code == 0
    pages = [p for p in sorted(notebooks.glob("*/*.html")) if p.name != "index.html"]
    assert len(pages) >= 14  # 7 templates x 2 tasks, and the comparison's page if its test ran first
    screenshots = tmp_path_factory.mktemp("browser-test")
    for path in pages:
        shown, errors, fetched = open_page(browser, path, screenshots / f"{path.parent.name}-{path.stem}.png")
        where = f"{path.parent.name}/{path.name}"
        assert errors == [], where
        assert fetched == [], f"{where} fetched from the network"
        assert shown["figures"], where
        assert all(f["drawn"] and f["traces"] > 0 and f["points"] > 0 for f in shown["figures"]), where
        if path.stem in ("dla", "head_functions"):
            assert shown["views"], f"{where} has its attention view"
        # each view drew its heads: a selector naming every head in its data, and the zoomed pattern
        assert all(v["elements"] > 10 and all(h in v["text"] for h in v["heads"]) and "Zoomed" in v["text"]
                   for v in shown["views"]), where
    print(f"screenshots: {screenshots}")


def test_a_page_whose_library_is_missing_is_caught(browser: Any, tmp_path: Path) -> None:
    """The checks above can fail: the same page without plotly.js shows an error and no drawn figure."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("fig", outputs=[nbformat.v4.new_output(
        "display_data", data={export.PLOTLY_MIME: {"data": [{"type": "bar", "y": [1, 2, 3]}], "layout": {}}})])])
    nbformat.write(nb, tmp_path / "one.ipynb")
    page = export.export_notebook(tmp_path / "one.ipynb")
    shown, errors, fetched = open_page(browser, page, tmp_path / "good.png")
    assert errors == [] and fetched == [] and shown["figures"] == [{"drawn": True, "traces": 1, "points": 3}]
    plotly_js = export._script(export.library_sources()["plotly"].read_text(encoding="utf-8"))
    page.write_text(page.read_text(encoding="utf-8").replace(plotly_js, ""), encoding="utf-8")
    shown, errors, _ = open_page(browser, page, tmp_path / "broken.png", timeout_ms=2_000)
    assert any("Plotly is not defined" in e for e in errors) and shown["figures"][0]["drawn"] is False
