"""bench/http_load.py's requests, the HTTP cells of `make bench-serve`, against a real server:
each kind answers with results, and h2load --h1 replays it as bench/serve.py does (no speed is
asserted here)."""

from __future__ import annotations

import json
import shutil
import urllib.request
from urllib.parse import urlsplit

import pytest

from bench import http_load
from bench.load import LoadError, h2load
from tests.server.api.http.web import sample_pixels, sample_png

needs_h2load = pytest.mark.skipif(shutil.which("h2load") is None,
                                  reason="h2load missing: `make install` installs it as root "
                                         "(Debian nghttp2-client)")
PIXELS = sample_pixels("coat", "bag")
PNGS = [sample_png("coat"), sample_png("bag")]


def post(base: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """The answer's JSON: all of it, or the binary data extension's JSON header."""
    with urllib.request.urlopen(urllib.request.Request(base + path, body, headers),
                                timeout=60) as answer:
        assert answer.status == 200
        data = answer.read()
        size = answer.headers.get("Inference-Header-Content-Length")
    return json.loads(data[:int(size)] if size else data)


@pytest.mark.parametrize("kind", http_load.KINDS)
def test_each_kind_is_a_request_the_server_answers_with_every_image(base, kind):
    answer = post(base, *http_load.payload(kind, "lenet_bn", PIXELS, PNGS, 3))
    if kind == "multipart":
        assert len(answer["classifications"]) == 3
    else:
        assert [(o["name"], o["shape"]) for o in answer["outputs"]] == [("probabilities", [3, 10])]


@needs_h2load
@pytest.mark.parametrize("kind", http_load.KINDS)
def test_h2load_replays_each_kind_over_http1(base, kind):
    path, body, headers = http_load.payload(kind, "lenet_bn", PIXELS, PNGS, 1)
    cell = h2load(urlsplit(base).port, path, body, callers=2, seconds=0.2, warmup=0.1, h1=True,
                  headers=[f"{k}: {v}" for k, v in headers.items()])
    assert cell["calls"] > 0 and cell["p99_ms"] >= cell["p50_ms"] > 0


@needs_h2load
def test_a_refused_request_fails_the_cell(base):
    path, body, headers = http_load.payload("json", "no-such-model", PIXELS, PNGS, 1)
    with pytest.raises(LoadError, match="non-200"):
        h2load(urlsplit(base).port, path, body, callers=1, seconds=0.1, warmup=0.1, h1=True,
               headers=[f"{k}: {v}" for k, v in headers.items()])
    with pytest.raises(ValueError, match="kind must be one of json, binary, multipart"):
        http_load.payload("xml", "lenet_bn", PIXELS, [], 1)
