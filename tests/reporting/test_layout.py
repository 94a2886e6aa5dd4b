"""The report in a real browser (Debian's Chromium through Playwright): at 1280 px, a common
laptop width, the summary table fits the page (its figures and what they were measured on go on
two lines rather than pushing it wider), and no page scrolls sideways; in a narrower window a
table scrolls in its own box. The report is `trained`'s (one model that learnt, two stopped after
one step: the summary's longest cells), built by `python -m reporting`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.server.api.http.browser import chromium, needs_chromium
from tests.serving_fixtures import run_cli

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def pages(trained, fmnist_dir, tmp_path_factory) -> list[Path]:
    """index.html first, then the cards."""
    folder = tmp_path_factory.mktemp("report-layout")
    run_cli("-m", "reporting", "--artifacts", str(trained), "--out", str(folder),
            "--data-dir", str(fmnist_dir), "--near-chance-images", "32", "--no-progress")
    return [folder / "index.html", *sorted(p for p in folder.glob("*.html")
                                           if p.name != "index.html")]


def layout(browser, page_file: Path, width: int) -> dict:
    """The page's scroll width, the window's, and per table its right edge and its box's."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto(page_file.as_uri())
    found = page.evaluate("""() => ({
        page: document.documentElement.scrollWidth, window: window.innerWidth,
        tables: [...document.querySelectorAll('table')].map(t => [
            t.getBoundingClientRect().right, t.parentElement.getBoundingClientRect().right])})""")
    page.close()
    return found


def test_at_1280_px_the_summary_table_fits_and_no_page_scrolls_sideways(pages):
    with chromium() as browser:
        found = {p.name: layout(browser, p, 1280) for p in pages}
    summary_right, box_right = found["index.html"]["tables"][0]
    assert summary_right <= box_right + 0.5, found["index.html"]  # all of it in view
    assert {name: f["page"] for name, f in found.items() if f["page"] > f["window"]} == {}


def test_in_a_narrow_window_tables_scroll_in_their_own_box(pages):
    with chromium() as browser:
        index = layout(browser, pages[0], 800)
    assert index["page"] <= index["window"]
    summary_right, box_right = index["tables"][0]
    assert summary_right > box_right  # wider than the window: it scrolls, the page does not
