"""The server's limits over HTTP: --max-message-bytes bounds bodies (413), --request-read-timeout a
slow body (408), deadlines (504), --max-in-flight (429 with Retry-After), and draining (503 for
new requests while those in flight finish). After each refusal the server goes on serving."""

from __future__ import annotations

import http.client
import json
import socket
import threading

import pytest

from harness.wait import until
from server.api.grpc.transport import Transport
from server.app import create_server
from server.dataplane.types import Limits
from tests.server.api.http.web import (
    body_of,
    call,
    multipart,
    raw_exchange,
    sample_png,
    status_of,
)
from tests.server.conftest import TEST_LIMITS
from tests.server.fakes import FakeRunner, fake_model

MODEL = "lenet_bn"
LIMIT = TEST_LIMITS.max_message_bytes


def still_serving(base: str) -> None:
    assert call(f"{base}/v1/models/{MODEL}:classify", sample_png("coat")).status == 200


def head(port: int, path: str, length: int, expect: bool = False) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/png\r\n"
            f"Content-Length: {length}\r\n" + ("Expect: 100-continue\r\n" if expect else "")
            + "\r\n").encode()


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(http_server, base):
    port = http_server.http_port
    raw = raw_exchange(port, head(port, f"/v1/models/{MODEL}:classify", LIMIT + 1, expect=True))
    assert status_of(raw) == 413 and b"100 Continue" not in raw
    assert body_of(raw)["error"] == (f"the request body is {LIMIT + 1:,} bytes, over the limit of "
                                     f"{LIMIT:,} bytes (--max-message-bytes); send fewer or "
                                     "smaller images per request")
    still_serving(base)


def test_a_declared_body_over_the_limit_is_refused_before_a_byte_of_it_arrives(http_server):
    """Without Expect: 100-continue too: the headers alone are answered (a server that counted
    the body as it came would wait for it, and answer 408 after the read timeout)."""
    port = http_server.http_port
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(head(port, f"/v2/models/{MODEL}/infer", LIMIT + 1))
        answer = s.recv(65536)
    assert status_of(answer) == 413 and b"--max-message-bytes" in answer


def test_a_small_unread_body_is_read_away_and_the_connection_serves_on(http_server):
    connection = http.client.HTTPConnection("127.0.0.1", http_server.http_port, timeout=60)
    connection.request("GET", "/v2/health/live", body=bytes(1000))
    assert connection.getresponse().read() == b'{"live": true}'
    connection.request("GET", "/v2/health/live")  # the same connection
    assert connection.getresponse().status == 200
    connection.close()


def test_a_huge_unread_body_closes_the_connection_unread(http_server):
    """A declared 10 GB body on a route that reads none: answered, then the connection closed
    at once. A server that read it away would hold the connection for its read timeout (10 s)
    while the client sends nothing more: the socket's 5 s timeout would end the test first."""
    port = http_server.http_port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000"
                  b"\r\n\r\n" + bytes(65536))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert status_of(data) == 200 and b"Connection: close" in data


@pytest.mark.parametrize("path", [f"/v1/models/{MODEL}:classify", f"/v2/models/{MODEL}/infer"])
def test_a_body_over_the_limit_sent_whole_is_413(base, path):
    answer = call(base + path, bytes(LIMIT + 1000), {"Content-Type": "application/octet-stream"})
    assert answer.status == 413 and "--max-message-bytes" in answer.error
    still_serving(base)


def test_a_chunked_body_is_counted_as_it_arrives(http_server, base):
    connection = http.client.HTTPConnection("127.0.0.1", http_server.http_port, timeout=60)
    chunks = (bytes(64 * 1024) for _ in range(LIMIT // (64 * 1024) + 2))
    connection.request("POST", f"/v1/models/{MODEL}:classify", body=chunks,
                       headers={"Content-Type": "image/png"}, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"].startswith("the request body over the limit")
    connection.close()
    still_serving(base)


def test_the_parts_of_a_form_count_against_the_limit(base):
    body, headers = multipart([("image", f"{i}.png", bytes(LIMIT // 3)) for i in range(4)])
    answer = call(f"{base}/v1/models/{MODEL}:classify", body,
                  {**headers, "Transfer-Encoding": "chunked"})
    assert answer.status == 413
    still_serving(base)


def test_a_slow_body_is_408_within_the_read_timeout(models_dir):
    srv, _ = create_server(models_dir, port=0, device="cpu", http_port=0,
                           transport=Transport(request_read_timeout_seconds=0.5))
    srv.start()
    try:
        port = srv.http_port
        raw = raw_exchange(port, head(port, f"/v1/models/{MODEL}:classify", 1000), [b"\x89PNG"])
        assert status_of(raw) == 408 and b"Connection: close" in raw
        assert body_of(raw)["error"] == ("the request body did not arrive within 0.5 s "
                                         "(--request-read-timeout)")
        still_serving(f"http://127.0.0.1:{port}")
    finally:
        srv.stop(0)


@pytest.mark.parametrize("value, status, words", [
    ("0.000000001", 504, "the deadline passed before decoding"),
    ("soon", 400, "X-Request-Timeout must be a number of seconds > 0, got 'soon'"),
    ("-1", 400, "X-Request-Timeout must be a number of seconds > 0"),
    ("30", 200, None),
])
def test_the_timeout_header_is_the_cores_deadline(base, value, status, words):
    for path in (f"/v1/models/{MODEL}:classify", f"/v2/models/{MODEL}/infer"):
        body = (sample_png("coat") if "classify" in path else json.dumps({"inputs": [
            {"name": "image", "datatype": "UINT8", "shape": [1, 1, 28, 28],
             "data": [0] * 784}]}).encode())
        answer = call(base + path, body, {"X-Request-Timeout": value})
        assert answer.status == status and (words is None or words in answer.error)


class GatedRunner(FakeRunner):
    """A fake model whose runs wait for `gate`: requests stay in flight until the test says."""

    def __init__(self):
        super().__init__("gated")
        self.gate = threading.Event()

    def run(self, images):
        self.started.set()
        self.gate.wait(60)
        return super().run(images)


@pytest.fixture
def gated():
    """A server (max 1 request in flight) whose one model waits for its runner's gate."""
    model = fake_model("gated")
    model = type(model)(spec=model.spec, runner=GatedRunner())
    srv, _ = create_server(models=[model], port=0, http_port=0, limits=Limits(max_in_flight=1))
    srv.start()
    yield srv, model.runner, f"http://127.0.0.1:{srv.http_port}"
    model.runner.gate.set()
    srv.stop(0)


def classify_in_thread(base: str) -> dict:
    answers = {}
    thread = threading.Thread(target=lambda: answers.update(
        first=call(f"{base}/v1/models/gated:classify", sample_png("coat"))))
    thread.start()
    answers["thread"] = thread
    return answers


def test_over_the_in_flight_limit_is_429_with_retry_after(gated):
    srv, runner, base = gated
    answers = classify_in_thread(base)
    until(lambda: srv.core.in_flight == 1, timeout=60, what="one request in flight")
    refused = call(f"{base}/v1/models/gated:classify", sample_png("bag"))
    assert refused.status == 429 and refused.headers["Retry-After"] == "1"
    assert refused.error == "the server is at its limit of 1 requests in flight; retry later"
    runner.gate.set()
    answers["thread"].join(60)
    assert answers["first"].status == 200


def test_draining_refuses_new_requests_while_those_in_flight_finish(gated):
    srv, runner, base = gated
    answers = classify_in_thread(base)
    until(runner.started.is_set, timeout=60, what="the first request running")
    stopped = {}
    stopper = threading.Thread(target=lambda: stopped.update(clean=srv.stop(60)))
    stopper.start()
    until(lambda: srv.core.draining, timeout=60, what="draining")
    new = call(f"{base}/v1/models", None)
    assert new.status == 503
    assert new.error == "the server is shutting down; retry on another instance"
    assert call(f"{base}/v2/health/ready").status == 503
    assert call(f"{base}/v2/health/live").status == 200  # alive while it drains
    runner.gate.set()
    answers["thread"].join(60)
    stopper.join(60)
    assert answers["first"].status == 200 and stopped["clean"] is True
    with pytest.raises(OSError):  # the port is closed once stopped
        call(f"{base}/v2/health/live")
