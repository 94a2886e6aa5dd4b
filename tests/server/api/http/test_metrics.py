"""HTTP requests are counted where every request is, in the core, with protocol="http": a client
sees the same figures for what it sent over HTTP as for gRPC (server/metrics.py)."""

from __future__ import annotations

from tests.server.api.http.web import call, post_json, sample_png
from harness.process import by_labels, scrape

KEYS = ("model", "version", "protocol", "code")


def counts(srv, name: str = "fmnist_requests_total") -> dict[tuple, float]:
    return by_labels(scrape(srv.metrics.port), name, *KEYS)


def test_http_requests_are_counted_as_http(http_server, base):
    before, images_before = counts(http_server), counts(http_server, "fmnist_images_total")
    tensor = {"name": "image", "datatype": "UINT8", "shape": [2, 1, 28, 28], "data": [0] * 1568}
    assert post_json(f"{base}/v2/models/lenet_bn/infer", {"inputs": [tensor]}).status == 200
    assert call(f"{base}/v1/models/lenet_bn:classify", sample_png("coat")).status == 200
    assert call(f"{base}/v1/models/lenet_bn:classify", b"not an image").status == 400
    assert call(f"{base}/v1/models/nothing:classify", sample_png("coat")).status == 404
    bad_shape = {**tensor, "shape": [2, 28, 28]}
    assert post_json(f"{base}/v2/models/lenet_bn/infer", {"inputs": [bad_shape]}).status == 400
    after = counts(http_server)
    delta = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    assert delta == {("lenet_bn", "1", "http", "OK"): 2,
                     ("lenet_bn", "1", "http", "INVALID_ARGUMENT"): 2,
                     ("", "", "http", "NOT_FOUND"): 1}
    ok = ("lenet_bn", "1", "http", "OK")
    assert counts(http_server, "fmnist_images_total")[ok] - images_before.get(ok, 0) == 3
