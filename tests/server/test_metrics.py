"""Prometheus /metrics of a real server: known traffic over fmnist.v1, then exact figures.

Fake models (tests/server/fakes.py) keep it cheap; the server, the core, the batchers and the
HTTP exposition are the real ones.
"""

from __future__ import annotations

import asyncio
import socket
import threading

import grpc
import pytest
from fmnist.v1 import classifier_pb2 as pb
from fmnist.v1 import classifier_pb2_grpc as pb_grpc

from server.app import create_server
from server.batching.batcher import BatchPolicy
from server.cli import get_args_parser
from server.dataplane.core import Core
from server.dataplane.types import Batching, ImageData
from server.metrics.registry import Metrics
from server.models.spec import Refusal
from tests.server.fakes import fake_model
from harness.process import ServerProcess, by_labels, scrape

RAW = bytes(range(200)) * 3 + bytes(184)  # 784 bytes: one 28x28 image


@pytest.fixture(scope="module")
def traffic():
    """A server with metrics on a free port after 3 OK requests of 2 images, 1 NOT_FOUND and
    1 INVALID_ARGUMENT (a 10-byte raw image), one at a time; yields (server, scrape)."""
    # max_delay 0: each request runs as its own batch, so the batch figures are exact.
    server, port = create_server(models=[fake_model("fake", 1)], port=0, metrics_port=0,
                                 batching=Batching(BatchPolicy(max_delay=0.0)))
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ClassifierStub(channel)
            two = [pb.Image(raw=RAW), pb.Image(raw=RAW)]
            for _ in range(3):
                stub.Classify(pb.ClassifyRequest(model="fake", images=two), timeout=10)
            for request, code in ((pb.ClassifyRequest(model="nope", images=two),
                                   grpc.StatusCode.NOT_FOUND),
                                  (pb.ClassifyRequest(model="fake", images=[pb.Image(raw=b"x" * 10)]),
                                   grpc.StatusCode.INVALID_ARGUMENT)):
                with pytest.raises(grpc.RpcError) as e:
                    stub.Classify(request, timeout=10)
                assert e.value.code() == code
        yield server, scrape(server.metrics.port)
    finally:
        server.stop(0)


def test_requests_and_images_by_model_version_protocol_and_code(traffic):
    _, samples = traffic
    keys = ("model", "version", "protocol", "code")
    assert by_labels(samples, "fmnist_requests_total", *keys) == {
        ("fake", "1", "fmnist.v1", "OK"): 3,
        ("", "", "fmnist.v1", "NOT_FOUND"): 1,  # a made-up name never becomes a label value
        ("fake", "1", "fmnist.v1", "INVALID_ARGUMENT"): 1}
    assert by_labels(samples, "fmnist_images_total", *keys) == {
        ("fake", "1", "fmnist.v1", "OK"): 6,
        ("", "", "fmnist.v1", "NOT_FOUND"): 2,
        ("fake", "1", "fmnist.v1", "INVALID_ARGUMENT"): 1}


def test_latency_histograms_count_every_request_and_batch(traffic):
    _, samples = traffic
    request = by_labels(samples, "fmnist_request_duration_seconds_count", "model", "code")
    assert request == {("fake", "OK"): 3, ("", "NOT_FOUND"): 1, ("fake", "INVALID_ARGUMENT"): 1}
    # Decoded: the 3 OK requests and the one whose image failed; NOT_FOUND never got that far.
    assert by_labels(samples, "fmnist_decode_duration_seconds_count", "model", "version",
                     "protocol") == {("fake", "1", "fmnist.v1"): 4}
    for name in ("fmnist_queue_wait_seconds_count", "fmnist_inference_duration_seconds_count",
                 "fmnist_batch_size_count"):
        assert by_labels(samples, name, "model", "version") == {("fake", "1"): 3}, name
    assert by_labels(samples, "fmnist_batch_size_sum", "model", "version") == {("fake", "1"): 6}
    buckets = by_labels(samples, "fmnist_request_duration_seconds_bucket", "code", "le")
    assert buckets[("OK", "0.0005")] <= buckets[("OK", "10.0")] == buckets[("OK", "+Inf")] == 3


def test_gauges_model_ready_and_process_metrics(traffic):
    _, samples = traffic
    assert by_labels(samples, "fmnist_model_ready", "model", "version", "provider") == {
        ("fake", "1", "CPUExecutionProvider"): 1}
    assert by_labels(samples, "fmnist_queue_images", "model", "version") == {("fake", "1"): 0}
    assert by_labels(samples, "fmnist_requests_in_flight") == {(): 0}
    assert by_labels(samples, "process_cpu_seconds_total")[()] > 0
    assert "python_info" in samples


def test_refused_versions_are_not_ready():
    metrics = Metrics()
    core = Core([fake_model("fake", 2)], refused=[Refusal("fake", 1, "probe mismatch")])
    core.start()
    metrics.watch(core)
    try:
        port = metrics.start("127.0.0.1", 0)
        assert by_labels(scrape(port), "fmnist_model_ready", "model", "version", "provider") == {
            ("fake", "2", "CPUExecutionProvider"): 1, ("fake", "1", ""): 0}
    finally:
        metrics.stop()
        core.close()


def test_versions_that_come_and_go_are_followed():
    metrics = Metrics()
    core = Core([fake_model("fake", 1)], observer=metrics.observe_request)
    metrics.watch(core)
    core.start()
    try:
        core.served.add(fake_model("fake", 2))
        core.served.remove("fake", 1)
        asyncio.run(core.classify("fake", 0, [ImageData("raw", RAW)] * 3))
        samples = scrape(metrics.start("127.0.0.1", 0))
    finally:
        metrics.stop()
        core.close()
    assert by_labels(samples, "fmnist_batch_size_sum", "model", "version") == {("fake", "2"): 3}
    assert by_labels(samples, "fmnist_model_ready", "model", "version") == {("fake", "2"): 1}
    assert by_labels(samples, "fmnist_requests_total", "version", "code") == {("2", "OK"): 1}


def test_observer_sees_bugs_as_internal_and_cancelled_calls_as_cancelled():
    events = []
    models = [fake_model("broken", 1, error=RuntimeError("a bug")),
              fake_model("slow", 1, gate=threading.Event())]
    slow = models[1].runner
    core = Core(models, observer=events.append)
    core.start()

    async def calls():
        with pytest.raises(RuntimeError):
            await core.classify("broken", 0, [ImageData("raw", RAW)])
        task = asyncio.ensure_future(core.infer("slow", 0, [ImageData("raw", RAW)] * 2,
                                                protocol="v2"))
        assert await asyncio.to_thread(slow.started.wait, 10)  # running in the batcher
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(calls())
    finally:
        slow.gate.set()
        core.close()
    assert [(e.model, e.version, e.protocol, e.code, e.images) for e in events] == [
        ("broken", 1, "fmnist.v1", "INTERNAL", 1), ("slow", 1, "v2", "CANCELLED", 2)]
    assert all(e.seconds > 0 and e.decode_seconds is not None for e in events)


def test_stop_closes_the_metrics_port(traffic):
    server, _ = traffic
    server.stop(0)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.metrics.port), timeout=2).close()


def test_no_metrics_port_no_metrics():
    server, _ = create_server(models=[fake_model("fake", 1)], port=0)
    try:
        assert server.metrics is None and server.core.observer is None
    finally:
        server.stop(0)


def test_cli_metrics_port_0_serves_no_metrics(tmp_path):
    assert get_args_parser().parse_args([]).metrics_port == 8002
    process = ServerProcess("--models-dir", str(tmp_path), "--port", "0", "--device", "cpu",
                            "--metrics-port", "0", "--allow-empty")
    process.wait_for_port()
    process.proc.terminate()
    assert process.wait() == 0
    assert "listening on" in process.log and "metrics on" not in process.log
