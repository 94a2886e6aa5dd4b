"""Debian's Chromium driven by Playwright (Python), for the page's tests and its screenshot.

Never Playwright's own browser download: `make install` as root installs Debian's chromium at
/usr/bin/chromium, and that is the browser used. Without it the browser tests skip, saying so.

    python -c "from tests.server.api.http.browser import screenshot; \
               screenshot('http://127.0.0.1:8000', 'docs/web-page.png')"
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from tests.serving_fixtures import SAMPLES

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (`make install` as root installs "
                                  "Debian's chromium; `apt-get install chromium` does it alone)")


@contextlib.contextmanager
def chromium():
    """A headless Chromium (Playwright's Browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def screenshot(base: str, path: str | Path, images: tuple[str, ...] = (
        "coat.png", "ankle_boot.png", "bag.png", "dress.png")) -> None:
    """The page at `base` with `images` classified, saved as a PNG at `path` (docs/web-page.png
    is made so, with the demo's models)."""
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        page.goto(base + "/")
        page.wait_for_function("document.querySelectorAll('#model option').length > 0")
        page.set_input_files("#files", [str(SAMPLES / name) for name in images])
        page.wait_for_function("document.querySelectorAll('.result[data-state=done]').length"
                               f" === {len(images)}")
        page.screenshot(path=str(path), full_page=True)
