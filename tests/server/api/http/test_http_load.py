"""bench/http_load.py, the HTTP cells of `make bench-serve`, against a real server: every kind of
request answers, and rows come back in bench/serve.py's shape (no speed is asserted here)."""

from __future__ import annotations

import asyncio

import pytest

from bench import http_load
from bench.load import drive
from tests.server.api.http.web import sample_pixels, sample_png


def test_every_kind_measures_rows_in_the_bench_shape(base):
    pixels, pngs = sample_pixels("coat", "bag"), [sample_png("coat"), sample_png("bag")]
    rows = asyncio.run(http_load.measure(base, "lenet_bn", pixels, pngs, drive,
                                         cells=[(1, 1), (3, 2)], seconds=0.2))
    assert [(r["side"], r["batch"], r["callers"]) for r in rows] == [
        (f"http {kind}", batch, callers) for kind in http_load.KINDS
        for batch, callers in ((1, 1), (3, 2))]
    assert all(r["calls"] > 0 and r["images_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0
               for r in rows)


def test_a_refused_request_stops_the_run_with_the_servers_message(base):
    with pytest.raises(RuntimeError, match="404.*not served"):
        asyncio.run(http_load.measure(base, "no-such-model", sample_pixels("coat"),
                                      [sample_png("coat")], drive, cells=[(1, 1)], seconds=0.1))
    with pytest.raises(ValueError, match="kind must be one of json, binary, multipart"):
        http_load.payload("xml", "lenet_bn", sample_pixels("coat"), [], 1)
