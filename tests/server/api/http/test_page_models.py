"""The page picks the model the client picks without --model (the best accuracy it can be sure
of: lenet_bn's 0.9028 on 10,000 test images over densenet's 0.9030 on 1,000) and marks the
models near chance (alexnet at 0.11), in a real browser (tests/model_copies.py makes the models;
the client's side: tests/client/test_default_model.py)."""

from __future__ import annotations

import pytest

from server.app import create_server
from tests.model_copies import ranked_models
from tests.server.api.http.browser import chromium, needs_chromium

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def ranked_page(models_dir, tmp_path_factory) -> str:
    root = ranked_models(models_dir, tmp_path_factory.mktemp("ranked") / "models")
    srv, _ = create_server(root, port=0, device="cpu", http_port=0)
    srv.start()
    yield f"http://127.0.0.1:{srv.http_port}/"
    srv.stop(0)


def test_the_page_picks_the_surest_model_and_marks_those_near_chance(ranked_page):
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(ranked_page)
        page.wait_for_function("document.querySelectorAll('#model option').length === 3")
        chosen = page.input_value("#model")
        options = dict(page.eval_on_selector_all(
            "#model option", "os => os.map(o => [o.value, o.textContent])"))
        info = page.inner_text("#model-info")
        page.select_option("#model", "alexnet@1")
        alexnet_info = page.inner_text("#model-info")
    assert chosen == "lenet_bn@1"
    assert [value for value, text in options.items() if text.endswith("(near chance)")] == [
        "alexnet@1"]
    assert options["alexnet@1"] == "alexnet v1 · CPU · 11.0% accuracy (near chance)"
    assert info.startswith("Measured on 10,000 test images") and "Near chance" not in info
    assert "Near chance" in alexnet_info
