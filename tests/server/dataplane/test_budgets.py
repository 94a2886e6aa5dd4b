"""Memory budgets on a real server process: images that are tiny on the wire and huge decoded.

A 4096x4096 16-bit PNG of one grey level is ~40 kB; decoded naively (16-bit array, then int64 and
float64 copies) it cost ~1 GB of transient memory, and 4 requests of 16 such images took the old
server from 82 MB to 1.26 GB. This measures the server's peak resident memory (VmHWM: memory, not
time, so it does not depend on the machine's speed) while 32 such requests are in flight.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from fmnist.v1 import classifier_pb2 as pb
from fmnist.v1 import classifier_pb2_grpc as pb_grpc
from PIL import Image

from tests.serving_fixtures import REPO, models_dir  # noqa: F401 - fixture

MB = 1024 * 1024


def sixteen_bit_png(side: int = 4096) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((side, side), 30000, np.uint16)).save(buf, "PNG")
    return buf.getvalue()


def memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@pytest.fixture
def server_process(models_dir):  # noqa: F811
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--models-dir", str(models_dir), "--port", "0",
         "--metrics-port", "0", "--http-port", "0",
         "--device", "cpu", "--log-format", "json", "--max-images-per-request", "16"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    port = None
    for line in proc.stdout:
        record = json.loads(line) if line.startswith("{") else {}
        if "listening on" in record.get("message", ""):
            port = record["port"]
            break
    assert port, "the server did not start"
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
    yield proc, port
    proc.terminate()
    proc.wait(30)


@pytest.mark.slow
def test_32_amplification_requests_in_flight_stay_within_512_mb(server_process):
    proc, port = server_process
    png = sixteen_bit_png()
    assert len(png) < 100_000
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ClassifierStub(channel)
        raw = pb.Image(raw=bytes(784))
        stub.Classify(pb.ClassifyRequest(model="lenet_bn", images=[raw]), timeout=30)
        idle_kb = memory_kb(proc.pid, "VmRSS")
        over_budget = pb.ClassifyRequest(model="lenet_bn", images=[pb.Image(encoded=png)] * 16)
        within_budget = pb.ClassifyRequest(model="lenet_bn", images=[pb.Image(encoded=png)] * 2)

        def call(request):
            try:
                return stub.Classify(request, timeout=120).model
            except grpc.RpcError as e:
                return f"{e.code().name}: {e.details()}"

        with futures.ThreadPoolExecutor(32) as pool:
            results = list(pool.map(call, [over_budget, within_budget] * 16))
    peak_kb = memory_kb(proc.pid, "VmHWM")
    assert all("INVALID_ARGUMENT" in r and "pixels, over the limit" in r for r in results[::2])
    assert results[1::2] == ["lenet_bn"] * 16  # decoded within the budget, and answered
    assert (peak_kb - idle_kb) * 1024 < 512 * MB, (
        f"peak {peak_kb // 1024} MB against {idle_kb // 1024} MB idle")
