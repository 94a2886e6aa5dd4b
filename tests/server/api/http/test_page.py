"""The page at /, in a real browser (Debian's Chromium through Playwright): it loads the served
models, classifies samples/coat.png as a Coat with exactly the probabilities an in-process run of
the same model gives, shows the server's error for a text file, works with the keyboard alone,
and fits a phone's width.

The model is `coat_models_dir`'s lenet_bn, trained on the real Fashion-MNIST so that it does say
Coat (the fixtures' quick models, trained on synthetic data, would not), beside their lenet.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from server.app import create_server
from server.dataplane import imagefile
from tests.server.api.http.browser import chromium, needs_chromium
from tests.serving_fixtures import SAMPLES

pytestmark = needs_chromium
COAT = SAMPLES / "coat.png"


@pytest.fixture(scope="module")
def page_server(coat_models_dir):
    srv, _ = create_server(coat_models_dir, port=0, device="cpu", http_port=0)
    srv.start()
    yield f"http://127.0.0.1:{srv.http_port}"
    srv.stop(0)


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser, page_server):
    """The page, loaded, its models listed; `page.requested` holds every URL it asked for."""
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    page = context.new_page()
    page.requested = []
    page.on("request", lambda request: page.requested.append(request.url))
    page.goto(page_server + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length === 2")
    yield page
    context.close()


def in_process(models_dir, image: bytes, k: int) -> list[tuple[str, float]]:
    """The top k (label, probability) of the model file itself, on the server's decoding."""
    path = models_dir / "lenet_bn" / "1" / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    labels = json.loads(session.get_modelmeta().custom_metadata_map["fmnist.labels"])
    pixels = imagefile.decode_encoded(image)[None, None]
    (probabilities,) = session.run(["probabilities"], {"image": pixels})[0]
    top = np.argsort(-probabilities, kind="stable")[:k]
    return [(labels[i], float(probabilities[i])) for i in top]


def shown(page, n: int = 1) -> list[dict]:
    """Once `n` results are settled: each one's state, top label, bars and answer line."""
    page.wait_for_function(f"document.querySelectorAll('.result:not([data-state=pending])')"
                           f".length === {n} && document.querySelectorAll('.result').length "
                           f"=== {n}")
    return page.eval_on_selector_all(".result", """items => items.map(item => ({
        state: item.dataset.state,
        label: (item.querySelector('.top .label') || {}).textContent,
        bars: [...item.querySelectorAll('.bars li')].map(
            li => [li.dataset.label, Number(li.dataset.probability)]),
        text: item.querySelector('.answer').innerText}))""")


def test_the_page_lists_the_models_with_labelled_controls_and_nothing_from_elsewhere(
        page, page_server):
    options = page.eval_on_selector_all("#model option", "os => os.map(o => o.textContent)")
    assert sorted(o.split(" · ")[0] for o in options) == ["lenet v1", "lenet_bn v1"]
    assert all(" · CPU · " in o and "% accuracy" in o for o in options)  # near chance: marked
    assert page.inner_text("#status") == "2 model version(s) served."
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select, button')]
        .filter(e => !(e.labels && e.labels.length) && !e.textContent.trim()
                     && !e.getAttribute('aria-label')).map(e => e.id)""")
    assert unlabelled == []
    assert page.requested and all(url.startswith(page_server) for url in page.requested)


def test_coat_png_shows_coat_as_the_model_itself_says(page, coat_models_dir):
    page.select_option("#model", "lenet_bn@1")
    page.fill("#top-k", "3")
    page.dispatch_event("#top-k", "change")
    page.set_input_files("#files", str(COAT))
    (result,) = shown(page)
    assert (result["state"], result["label"]) == ("done", "Coat")
    expected = in_process(coat_models_dir, COAT.read_bytes(), 3)
    assert [label for label, _ in result["bars"]] == [label for label, _ in expected]
    assert [p for _, p in result["bars"]] == pytest.approx([p for _, p in expected], abs=1e-6)
    assert "lenet_bn v1 answered in" in result["text"] and "ms (server" in result["text"]


def test_a_text_file_shows_the_servers_error(page):
    page.set_input_files("#files", [
        {"name": "coat.png", "mimeType": "image/png", "buffer": COAT.read_bytes()},
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"buy milk"}])
    results = shown(page, 2)
    assert [r["state"] for r in results] == ["done", "error"]
    assert results[1]["text"] == ("Not classified: image 0: not a PNG, JPEG, BMP, GIF or WebP "
                                  "image (first bytes b'buy milk') (file 'notes.txt') (HTTP 400)")


def test_keyboard_only(page):
    """Tab to each control, change it with keys, open the file chooser with Space."""
    def tab_to(element_id: str) -> None:
        for _ in range(20):  # the controls come in document order; 20 is more than there are
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == element_id:
                return
        raise AssertionError(f"Tab never reached #{element_id}")

    # Playwright subscribes to file choosers without waiting for the browser's word (its
    # _update_subscription is fire-and-forget): subscribe now, long before Space is pressed.
    page.on("filechooser", lambda chooser: None)
    tab_to("model")
    before = page.input_value("#model")
    page.keyboard.press("ArrowDown" if before == page.eval_on_selector(
        "#model", "s => s.options[0].value") else "ArrowUp")
    chosen = page.input_value("#model")
    assert chosen != before
    tab_to("top-k")
    page.keyboard.press("Control+A")
    page.keyboard.type("5")
    tab_to("files")
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Space")
    chooser.value.set_files(str(COAT))
    (result,) = shown(page)
    assert result["state"] == "done" and len(result["bars"]) == 5
    assert result["text"].splitlines()[-1].startswith(f"{chosen.replace('@', ' v')} answered")
    tab_to("clear")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelectorAll('.result').length === 0")
    assert page.inner_text("#status") == "Results cleared."


def test_a_phone_sees_the_whole_page_without_scrolling_sideways(browser, page_server):
    phone = browser.new_context(viewport={"width": 360, "height": 740}, is_mobile=True,
                                has_touch=True, device_scale_factor=2)
    page = phone.new_page()
    page.goto(page_server + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length === 2")
    page.set_input_files("#files", str(COAT))
    shown(page)
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    phone.close()
    assert width[0] <= width[1]


def test_the_page_says_what_readiness_says(browser, models_dir):
    """The page tells the readiness that /v2/health/ready, gRPC health and KServe ServerReady
    tell (server/dataplane/core.py's one answer): with the --workers gate closed (as when a
    worker is down) it still lists the models, and says the server is not ready, and why."""
    srv, _ = create_server(models_dir, port=0, device="cpu", http_port=0)
    srv.start()
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{srv.http_port}/")
        page.wait_for_function("document.querySelector('#status').textContent.includes('served')")
        assert "not ready" not in page.text_content("#status")
        srv.set_gate(False)  # what the --workers parent tells a worker when another is down
        page.click("#token-box summary")
        page.click("#reload")
        page.wait_for_function("document.querySelector('#status').textContent.includes('ready')")
        status = page.locator("#status")
        assert status.text_content() == (
            "2 model version(s) listed; not ready: a worker of this server is not serving "
            "(--workers); retry shortly")
        assert "error" in status.get_attribute("class")
    finally:
        context.close()
        srv.stop(0)
