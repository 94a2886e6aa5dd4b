"""`python -m server` as a process: start-up facts in the log, start-up failures, SIGTERM draining."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from concurrent import futures

import grpc
import numpy as np
from fmnist.v1 import classifier_pb2 as pb
from fmnist.v1 import classifier_pb2_grpc as pb_grpc
from PIL import Image

from tests.server.fakes import needs_no_gpu
from tests.server.images import encode
from harness.process import ServerProcess
from tests.serving_fixtures import REPO


def test_help():
    out = subprocess.run([sys.executable, "-m", "server", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0
    for flag in ("--models-dir", "--host", "--port", "--device", "--model-version", "--grace",
                 "--max-images-per-request", "--max-image-pixels", "--max-message-bytes",
                 "--max-in-flight", "--log-format"):
        assert flag in out.stdout


def test_port_0_logs_every_start_up_fact_as_json_and_sigterm_exits_0(models_dir):
    server = ServerProcess("--models-dir", str(models_dir), "--port", "0", "--device", "cpu",
                           "--log-format", "json")
    port = server.wait_for_port()
    records = [json.loads(line) for line in server.lines]
    listening = next(r for r in records if "listening on" in r["message"])
    assert listening["port"] == port > 0
    loaded = [r["message"] for r in records if r["message"].startswith("loaded model")]
    assert len(loaded) == 2
    for line in loaded:
        assert "provider=CPUExecutionProvider" in line and "model.onnx" in line
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait() == 0
    assert json.loads(server.lines[-1])["message"] == "stopped"


def big_request() -> pb.ClassifyRequest:
    """12 photos-sized PNGs (1500x1500, ~0.5 MB each): decoding makes the request take a while."""
    rng = np.random.default_rng(0)
    a = np.full((1500, 1500), 230, np.uint8)
    a[300:1200, 400:1100] = rng.integers(0, 80, (900, 700), dtype=np.uint8)
    data = encode(Image.fromarray(a))
    return pb.ClassifyRequest(model="lenet_bn", top_k=2, images=[pb.Image(encoded=data)] * 12)


def keep_classifying(stub, request: pb.ClassifyRequest, answered: threading.Event) -> list:
    """Classify again and again until the server refuses. A draining server refuses new calls with
    UNAVAILABLE, and a call still arriving when the transport closes ends CANCELLED; any other
    error fails. Whether it cut off a call it had accepted, the server's log says."""
    responses = []
    while True:
        try:
            responses.append(stub.Classify(request, timeout=120))
        except grpc.RpcError as e:
            assert e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), e
            return responses
        answered.set()


def test_sigterm_lets_requests_in_flight_finish_then_exits_0(models_dir):
    """Three callers keep the server busy, so that SIGTERM (sent once one answer is back) finds
    requests in flight however fast this machine decodes: no sleep to guess the timing."""
    server = ServerProcess("--models-dir", str(models_dir), "--port", "0", "--device", "cpu",
                           "--grace", "60")
    port = server.wait_for_port()
    request = big_request()
    answered = threading.Event()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ClassifierStub(channel)
        with futures.ThreadPoolExecutor(3) as pool:
            callers = [pool.submit(keep_classifying, stub, request, answered) for _ in range(3)]
            assert answered.wait(120), server.log
            server.proc.send_signal(signal.SIGTERM)
            responses = [r for c in callers for r in c.result()]
    assert server.wait() == 0
    assert responses and all(len(r.classifications) == 12 for r in responses)
    drained = re.search(r"stopping: (\d+) request\(s\) in flight", server.log)
    assert drained and int(drained.group(1)) >= 1, server.log
    assert server.lines[-1].endswith("INFO server: stopped"), server.log  # nothing was cut off
    assert "SIGTERM received" in server.log and "Traceback" not in server.log


def test_sigint_on_an_idle_server_exits_0(tmp_path):
    server = ServerProcess("--models-dir", str(tmp_path), "--port", "0", "--device", "cpu",
                           "--allow-empty")
    server.wait_for_port()
    server.proc.send_signal(signal.SIGINT)
    assert server.wait() == 0
    assert "no models found" in server.log and "Traceback" not in server.log


@needs_no_gpu
def test_device_cuda_without_a_gpu_fails_at_start_up(models_dir):
    """Real, no mock: without a usable GPU the CUDA provider cannot be active."""
    server = ServerProcess("--models-dir", str(models_dir), "--port", "0", "--device", "cuda")
    assert server.wait(120) == 1
    assert "cannot start: --device cuda:" in server.log
    assert "CUDAExecutionProvider" in server.log and "Traceback" not in server.log
    assert "listening on" not in server.log


def test_missing_model_version_fails_at_start_up(models_dir):
    server = ServerProcess("--models-dir", str(models_dir), "--port", "0", "--device", "cpu",
                           "--model-version", "lenet=5")
    assert server.wait(120) == 1
    assert "--model-version lenet=5: no such version" in server.log


def test_port_in_use_fails_at_start_up(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = ServerProcess("--models-dir", str(tmp_path), "--port", str(port), "--device", "cpu")
        assert server.wait(60) == 1
    assert f"cannot serve gRPC on 127.0.0.1:{port}: Address already in use (--port" in server.log
    assert "add_port" not in server.log  # our one line, not grpc's own error log before it


def test_server_and_client_never_import_torch_nor_the_client_the_harness():
    code = ("import importlib, pkgutil, sys\n"
            "import server\n"
            "for m in pkgutil.walk_packages(server.__path__, 'server.'):\n"
            "    importlib.import_module(m.name)\n"
            "import client.predict\n"
            "bad = sorted(m for m in sys.modules\n"
            "             if m.split('.')[0] in ('torch', 'trainer', 'exporter', 'harness'))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_core_and_decoder_never_import_grpc():
    code = ("import sys\nimport server.dataplane.core, server.dataplane.request_images, "
            "server.models.repository, server.batching.batcher\n"
            "assert 'grpc' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_sigterm_delivered_to_another_thread_still_stops_the_server(models_dir):
    """The kernel hands a process's SIGTERM to any thread that does not block it; Python runs the
    handler only in the main thread. Sent here to a grpc or onnxruntime thread on purpose
    (tgkill), it must still drain and exit (the main thread used to wait an hour for it)."""
    import ctypes

    with ServerProcess("--models-dir", str(models_dir), "--port", "0", "--device", "cpu") as server:
        server.wait_for_port()
        pid = server.proc.pid
        others = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
        assert others, "the server runs no other thread"
        libc = ctypes.CDLL(None, use_errno=True)
        SYS_tgkill = 234  # the x86-64 number (tests run on x86-64 here)
        assert libc.syscall(SYS_tgkill, pid, others[-1], signal.SIGTERM) == 0, ctypes.get_errno()
        assert server.wait(30) == 0, server.log
    assert "SIGTERM received: draining" in server.log
