"""Every flag of `python -m server` has its effect, seen from outside the process: in what it
answers, what it logs, what it serves on /metrics, what it sends on the wire. One server process
shows several flags where they do not get in each other's way.

(The operator-facing flags -- --poll-seconds, --keep-versions, --allow-empty, --allow-unverified,
--models-dir, --host, --metrics-port -- are in test_operator.py; --grace and --decode-threads in
test_faults.py and test_cli.py; --log-format in test_cli.py; --otlp-endpoint in
test_tracing.py.)
"""

from __future__ import annotations

import io
import socket
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from fmnist.v1 import classifier_pb2 as pb
from fmnist.v1 import classifier_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inference import grpc_service_pb2 as v2
from inference import grpc_service_pb2_grpc as v2_grpc
from PIL import Image

from bench.serve import open_idle_streams
from tests.server.certs import CertificateAuthority
from tests.server.images import encode
from harness.process import ServerProcess, free_port
from tests.server.test_cli import big_request
from tests.serving_fixtures import models_dir  # noqa: F401 - fixture

CPU = ("--port", "0", "--device", "cpu")
RAW = pb.Image(raw=bytes(range(256)) * 3 + bytes(16))
PING, GOAWAY = 6, 7  # HTTP/2 frame types


def classify_request(*images: pb.Image, model: str = "lenet_bn") -> pb.ClassifyRequest:
    return pb.ClassifyRequest(model=model, images=list(images))


def error_of(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call(*args, **kwargs)
    return e.value


def png(width: int, height: int, mode: str = "L") -> bytes:
    return encode(Image.new(mode, (width, height), 200 if mode == "L" else (200, 180, 160)))


# --- limits ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def limited(models_dir):  # noqa: F811
    """One server with small limits, batching flags and spinning; yields (process, port)."""
    with ServerProcess("--models-dir", str(models_dir), *CPU,
                       "--max-images-per-request", "10", "--max-image-pixels", "1000000",
                       "--max-request-pixels", "1500000", "--max-message-bytes", "200000",
                       "--max-batch", "4", "--max-queue-delay-ms", "7",
                       "--max-queue-images", "12", "--batching", "lenet=2:0",
                       "--intra-op-threads", "1", "--spinning", "--log-level", "INFO") as server:
        yield server, server.wait_for_port()


def test_request_limits_refuse_what_is_over_them(limited):
    _, port = limited
    stub = pb_grpc.ClassifierStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    assert "11 images is over the limit of 10" in error_of(
        stub.Classify, classify_request(*[RAW] * 11), timeout=30).details()
    assert "over the limit of 1,000,000" in error_of(
        stub.Classify, classify_request(pb.Image(encoded=png(1001, 1000))), timeout=30).details()
    big = pb.Image(encoded=png(1000, 800))  # 800,000 pixels each: two are over 1,500,000
    assert stub.Classify(classify_request(big), timeout=30).classifications
    assert "over the limit of 1,500,000 per request" in error_of(
        stub.Classify, classify_request(big, big), timeout=30).details()
    too_long = pb.Image(encoded=bytes(210_000))
    assert error_of(stub.Classify, classify_request(too_long),
                    timeout=30).code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # --max-message-bytes
    limits = stub.ListModels(pb.ListModelsRequest(), timeout=30).limits
    assert (limits.max_images_per_request, limits.max_image_pixels, limits.max_message_bytes,
            limits.max_request_pixels) == (10, 1_000_000, 200_000, 1_500_000)


def test_max_in_flight_refuses_the_request_beyond_it(models_dir):  # noqa: F811
    """Three calls of twelve large photos each, decoded on one thread, are in flight for a while
    (the server's own gauge says when all three are); a fourth is refused meanwhile."""
    with ServerProcess("--models-dir", str(models_dir), *CPU, "--max-in-flight", "3",
                       "--decode-threads", "1", metrics=True) as server:
        port = server.wait_for_port()
        slow = big_request()
        channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _ in range(4)]
        with futures.ThreadPoolExecutor(3) as pool:
            calls = [pool.submit(pb_grpc.ClassifierStub(ch).Classify, slow, timeout=120)
                     for ch in channels[:3]]
            server.wait_for_metric("fmnist_requests_in_flight", lambda n: n == 3)
            refused = error_of(pb_grpc.ClassifierStub(channels[3]).Classify,
                               classify_request(RAW), timeout=30)
            assert all(len(c.result().classifications) == 12 for c in calls)
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit of 3 requests in flight" in refused.details()


def model_config(port: int, name: str):
    return v2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}")).ModelConfig(
        v2.ModelConfigRequest(name=name), timeout=30).config


def test_batching_flags_reach_every_model_and_the_per_model_override(limited):
    server, port = limited
    lenet_bn, lenet = model_config(port, "lenet_bn"), model_config(port, "lenet")
    assert (lenet_bn.max_batch_size, lenet_bn.dynamic_batching.max_queue_delay_microseconds) == (
        4, 7000)
    assert (lenet.max_batch_size, lenet.dynamic_batching.max_queue_delay_microseconds) == (2, 0)
    assert "batcher lenet_bn v1: max_batch=4 max_delay=7.0ms queue=12 images" in server.log
    assert "batcher lenet v1: max_batch=2 max_delay=0.0ms queue=12 images" in server.log
    stub = pb_grpc.ClassifierStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    stub.Classify(classify_request(*[RAW] * 10), timeout=30)  # alone: batches of 4, 4, 2
    stats = v2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}")) \
        .ModelStatistics(v2.ModelStatisticsRequest(name="lenet_bn"), timeout=30).model_stats[0]
    assert max(b.batch_size for b in stats.batch_stats) == 4


def test_intra_op_threads_and_spinning_set_up_each_session(limited):
    server, _ = limited
    loaded = [line for line in server.lines if "loaded model" in line]
    assert len(loaded) == 2 and all("intra_op_threads=1 spinning=on" in line for line in loaded)


def test_the_queue_limit_below_a_request_is_refused_at_start_up(models_dir):  # noqa: F811
    with ServerProcess("--models-dir", str(models_dir), *CPU, "--max-images-per-request", "20",
                       "--max-queue-images", "10") as server:
        assert server.wait(60) == 1
    assert "--max-queue-images 10 is below --max-images-per-request 20" in server.log


# --- the server-wide decoding budget ---------------------------------------------------------------

def peak_growth_mb(models_dir: Path, budget_images: int) -> float:
    """The server's peak memory (VmHWM) over its idle level while 6 requests, each one 4096x4096
    RGB PNG (tiny on the wire, 64 MB decoded), decode at once on 6 decode threads, with a
    --max-decoding-pixels of `budget_images` such images. With glibc's default of one malloc
    arena per thread, each decode thread keeps the memory of the image it decoded last (255 MB
    here for images decoded one at a time); two arenas, as deploy/Dockerfile sets, let the
    peak show what was decoding at once."""
    side = 4096
    with ServerProcess("--models-dir", str(models_dir), *CPU, "--decode-threads", "6",
                       "--max-decoding-pixels", str(budget_images * side * side),
                       env={"MALLOC_ARENA_MAX": "2"}) as server:
        port = server.wait_for_port()
        stub = pb_grpc.ClassifierStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        stub.Classify(classify_request(RAW), timeout=30)
        idle = _status_kb(server.proc.pid, "VmRSS")
        image = pb.Image(encoded=png(side, side, "RGB"))
        with futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: stub.Classify(classify_request(image), timeout=120),
                                    range(6)))
        assert all(a.classifications for a in answers)
        return (_status_kb(server.proc.pid, "VmHWM") - idle) / 1024


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@pytest.mark.slow
def test_max_decoding_pixels_bounds_what_decodes_at_once_when_threads_would_not(models_dir):  # noqa: F811
    """Six decode threads would decode the six images together; a budget of one image's pixels
    makes them take turns. Memory, not time: the peak is what the budget bounds."""
    one_at_a_time = peak_growth_mb(models_dir, budget_images=1)
    all_at_once = peak_growth_mb(models_dir, budget_images=6)
    assert one_at_a_time * 2 < all_at_once, (one_at_a_time, all_at_once)


# --- transport ---------------------------------------------------------------------------------------

def h2_frames_until(port: int, frame_type: int, timeout: float = 20) -> list[int]:
    """Open a bare HTTP/2 connection (no calls) and read frame types until one of `frame_type`
    arrives or the server closes; the types seen, in order."""
    seen: list[int] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
        buffer, deadline = b"", time.monotonic() + timeout
        while frame_type not in seen and (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                data = s.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            buffer += data
            while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:3], "big"):
                seen.append(buffer[3])
                buffer = buffer[9 + int.from_bytes(buffer[:3], "big"):]
    return seen


@pytest.mark.parametrize("flags, frame", [
    (("--keepalive-seconds", "1", "--max-connection-idle-seconds", "0"), PING),
    (("--max-connection-idle-seconds", "1"), GOAWAY),
    (("--max-connection-idle-seconds", "0", "--max-connection-age-seconds", "1"), GOAWAY),
], ids=["keepalive-ping", "idle-goaway", "age-goaway"])
def test_connection_flags_are_what_the_server_sends_on_the_wire(models_dir, flags, frame):  # noqa: F811
    with ServerProcess("--models-dir", str(models_dir), *CPU, *flags) as server:
        port = server.wait_for_port()
        assert frame in h2_frames_until(port, frame)


def test_the_defaults_send_neither_a_ping_nor_a_goaway_to_a_fresh_connection(models_dir):  # noqa: F811
    """The control for the test above: what made the frames come was the flags."""
    with ServerProcess("--models-dir", str(models_dir), *CPU) as server:
        port = server.wait_for_port()
        seen = h2_frames_until(port, GOAWAY, timeout=3)
    assert PING not in seen and GOAWAY not in seen


def test_request_read_timeout_ends_a_stream_that_never_sends(models_dir):  # noqa: F811
    with ServerProcess("--models-dir", str(models_dir), *CPU,
                       "--request-read-timeout", "0.5") as server:
        port = server.wait_for_port()
        release = threading.Event()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            [idle] = open_idle_streams(channel, 1, release)
            error = idle.exception(timeout=30)
            release.set()
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "within 0.5 s" in error.details() and "--request-read-timeout" in error.details()


# --- security ------------------------------------------------------------------------------------------

def test_tls_flags_serve_mutual_tls(models_dir, tmp_path):  # noqa: F811
    ca = CertificateAuthority(tmp_path, "ca")
    server_cert, client_cert = ca.issue("server", server=True), ca.issue("client", server=False)
    with ServerProcess("--models-dir", str(models_dir), *CPU, "--tls-cert", str(server_cert.cert),
                       "--tls-key", str(server_cert.key), "--tls-client-ca", str(ca.pem)) as server:
        port = server.wait_for_port()
        root = ca.pem.read_bytes()
        mutual = grpc.ssl_channel_credentials(root, client_cert.key.read_bytes(),
                                              client_cert.cert.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{port}", mutual) as channel:
            assert pb_grpc.ClassifierStub(channel).Classify(classify_request(RAW), timeout=30)
        for credentials in (grpc.ssl_channel_credentials(root), None):  # no client cert; plaintext
            channel = (grpc.secure_channel(f"127.0.0.1:{port}", credentials) if credentials
                       else grpc.insecure_channel(f"127.0.0.1:{port}"))
            with channel:
                assert error_of(pb_grpc.ClassifierStub(channel).Classify, classify_request(RAW),
                                timeout=10).code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("open_services, health_open", [(None, True), ("", False)])
def test_token_file_guards_every_call_but_the_open_services(models_dir, tmp_path,  # noqa: F811
                                                            open_services, health_open):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("# operators\ns3cret-token\n")
    extra = () if open_services is None else ("--open-services", open_services)
    with ServerProcess("--models-dir", str(models_dir), *CPU, "--auth-token-file", str(tokens),
                       *extra) as server:
        port = server.wait_for_port()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ClassifierStub(channel)
            bearer = (("authorization", "Bearer s3cret-token"),)
            assert stub.Classify(classify_request(RAW), timeout=30, metadata=bearer)
            assert error_of(stub.Classify, classify_request(RAW),
                            timeout=30).code() == grpc.StatusCode.UNAUTHENTICATED
            check = health_pb2_grpc.HealthStub(channel).Check
            if health_open:
                assert check(health_pb2.HealthCheckRequest(), timeout=30).status == \
                    health_pb2.HealthCheckResponse.SERVING
            else:
                assert error_of(check, health_pb2.HealthCheckRequest(),
                                timeout=30).code() == grpc.StatusCode.UNAUTHENTICATED
    assert "s3cret-token" not in server.log


# --- logging -------------------------------------------------------------------------------------------

def test_log_level_warning_keeps_info_lines_out(models_dir):  # noqa: F811
    port = free_port()
    with ServerProcess("--models-dir", str(models_dir), "--port", str(port), "--device", "cpu",
                       "--log-level", "WARNING") as server:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=120)
            stub = pb_grpc.ClassifierStub(channel)
            stub.Classify(classify_request(RAW), timeout=30)
            error_of(stub.Classify, classify_request(RAW, model="missing"), timeout=30)
    assert " INFO " not in server.log and "loaded model" not in server.log
    assert "WARNING server.api.grpc.classifier: Classify from" in server.log  # the NOT_FOUND
