"""A call the server turns away ends Trailers-Only (the status and nothing before it), so that a
client's gRPC retry policy can replay it on another replica: a client commits a call, and never
retries it, once response headers or a message arrive. grpc.aio sends both (headers and an empty
message) when a unary handler returns after set_code; server/api/grpc/transport.py ends such
calls as context.abort does. Measured through a real retry policy (client/balancing.py): the
server's own count of the attempts."""

from __future__ import annotations

import gc

import grpc
import pytest
from fmnist.v1 import classifier_pb2 as pb
from fmnist.v1 import classifier_pb2_grpc as pb_grpc

from client.balancing import Balancing, channel_options
from harness.process import scrape
from harness.wait import until
from server.app import create_server
from tests.serving_fixtures import models_dir  # noqa: F401 - fixture

ATTEMPTS = 3
RAW = pb.ClassifyRequest(model="lenet_bn", images=[pb.Image(raw=bytes(784))])


@pytest.fixture
def draining(models_dir):  # noqa: F811
    """A server whose core refuses every call with UNAVAILABLE, as in a drain."""
    server, port = create_server(models_dir, port=0, device="cpu", metrics_port=0)
    server.start()
    server.core.drain()
    yield server, port
    server.stop(0)


def attempts(server, code: str) -> float:
    return sum(value for labels, value in scrape(server.metrics.port)["fmnist_requests_total"]
               if labels["code"] == code)


def classify(port: int, request: pb.ClassifyRequest) -> grpc.StatusCode:
    options = channel_options(Balancing(max_attempts=ATTEMPTS, health_check=False))
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        try:
            pb_grpc.ClassifierStub(channel).Classify(request, timeout=30)
        except grpc.RpcError as e:
            assert "shutting down" in e.details() or e.code() != grpc.StatusCode.UNAVAILABLE
            return e.code()
    return grpc.StatusCode.OK


def test_a_call_refused_while_draining_is_replayed_by_the_clients_retry_policy(draining):
    server, port = draining
    assert classify(port, RAW) == grpc.StatusCode.UNAVAILABLE
    assert attempts(server, "UNAVAILABLE") == ATTEMPTS  # every attempt reached the server


def test_a_code_outside_the_retry_policy_is_answered_once(draining):
    server, port = draining
    unknown = pb.ClassifyRequest(model="lenet_bn", images=[pb.Image(raw=bytes(784))], top_k=99)
    assert classify(port, unknown) == grpc.StatusCode.INVALID_ARGUMENT
    assert attempts(server, "INVALID_ARGUMENT") == 1


def test_a_refused_call_leaves_nothing_for_the_garbage_collector(draining):
    """context.abort's exception stays on the call; with a traceback through the handler's
    frames it would hold the call in a reference cycle that only the collector frees. Measured
    with the collector off: 5 calls of 3 attempts left 17 AbortErrors alive that way, and leave
    at most the last call's (grpc.aio holds on to its latest call state)."""
    _, port = draining
    classify(port, RAW)  # warm: lazily made objects
    gc.collect()
    gc.disable()
    try:
        assert {classify(port, RAW) for _ in range(5)} == {grpc.StatusCode.UNAVAILABLE}
        until(lambda: aborted_calls_alive() <= ATTEMPTS, 10,
              "every refused call but the last freed by reference counting alone")
    finally:
        gc.enable()


def aborted_calls_alive() -> int:
    return sum(isinstance(o, grpc.aio.AbortError) for o in gc.get_objects())
