"""`python -m server` with HTTP, as a person starts it: --http-port (and 0 for none), the body
limit and read timeout that apply to HTTP, a taken HTTP port found before any model loads, TLS
and tokens from the same flags as gRPC, and SIGTERM closing the port after a clean drain."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import ssl
import subprocess

import pytest

from tests.server.api.http.web import body_of, call, raw_exchange, sample_png, status_of
from tests.server.certs import CertificateAuthority
from harness.process import ServerProcess, free_port
from harness.wait import until

CPU = ("--port", "0", "--device", "cpu")


def test_http_port_serves_the_page_and_the_api_until_sigterm(models_dir):
    port = free_port()
    with ServerProcess("--models-dir", str(models_dir), *CPU, "--http-port", str(port),
                       "--max-message-bytes", "4096", "--request-read-timeout", "1") as server:
        server.wait_for_port()
        server.wait_for_log(f"HTTP on http://127.0.0.1:{port}/")
        base = f"http://127.0.0.1:{port}"
        page = call(f"{base}/")
        assert page.status == 200 and b"<title>fmnist-serve" in page.body
        assert call(f"{base}/v2/health/ready").json == {"ready": True}
        answer = call(f"{base}/v1/models/lenet_bn:classify", sample_png("coat"))
        assert answer.status == 200 and answer.json["model"] == "lenet_bn"
        too_big = call(f"{base}/v1/models/lenet_bn:classify", bytes(5000))
        assert too_big.status == 413 and "over the limit of 4,096 bytes" in too_big.error
        head = (b"POST /v1/models/lenet_bn:classify HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 100\r\n\r\n")
        slow = raw_exchange(port, head, [b"\x89PNG"])
        assert status_of(slow) == 408
        assert body_of(slow)["error"] == ("the request body did not arrive within 1 s "
                                          "(--request-read-timeout)")
        server.proc.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_idle_http_connections_are_closed_after_max_connection_idle_seconds(models_dir):
    """One that never sends a request, one stalled in its headers and one idle after an answer:
    each is closed by the server (the socket reads its end) rather than holding a file
    descriptor for aiohttp's default hour."""
    port = free_port()
    with ServerProcess("--models-dir", str(models_dir), *CPU, "--http-port", str(port),
                       "--max-connection-idle-seconds", "1") as server:
        server.wait_for_port()
        server.wait_for_log(f"HTTP on http://127.0.0.1:{port}/")
        silent, stalled, used = (socket.create_connection(("127.0.0.1", port), timeout=30)
                                 for _ in range(3))
        stalled.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\n")
        used.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert used.recv(4096).startswith(b"HTTP/1.1 200")
        for sock in (silent, stalled, used):
            with sock:
                assert sock.recv(4096) == b""  # the server closed it (a hang: TimeoutError)
        assert call(f"http://127.0.0.1:{port}/v2/health/live").status == 200  # still serving


def test_http_port_0_serves_no_http(models_dir):
    with ServerProcess("--models-dir", str(models_dir), *CPU, "--http-port", "0") as server:
        server.wait_for_port()
        server.proc.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
    assert "HTTP on" not in server.log and "listening on" in server.log


def test_a_taken_http_port_is_a_start_up_error_before_any_model_loads(models_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with ServerProcess("--models-dir", str(models_dir), *CPU, "--http-port",
                           str(port)) as server:
            assert server.wait(60) == 1
    assert f"cannot serve HTTP on 127.0.0.1:{port}: Address already in use" in server.log
    assert "loaded model" not in server.log


def test_tls_and_tokens_from_the_grpc_flags(models_dir, tmp_path):
    ca = CertificateAuthority(tmp_path, "ca")
    issued = ca.issue("server", server=True)
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("letmein\n")
    with ServerProcess("--models-dir", str(models_dir), *CPU, "--tls-cert", str(issued.cert),
                       "--tls-key", str(issued.key), "--auth-token-file", str(tokens),
                       http=True) as server:
        server.wait_for_port()
        server.wait_for_log(f"HTTP on https://127.0.0.1:{server.http_port}/")
        base, context = f"https://127.0.0.1:{server.http_port}", ssl.create_default_context(
            cafile=ca.pem)
        assert call(f"{base}/v2/health/ready", context=context).status == 200  # open
        assert call(f"{base}/v1/models", context=context).status == 401
        assert call(f"{base}/v1/models", headers={"Authorization": "Bearer letmein"},
                    context=context).status == 200


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace missing (Debian: strace)")
def test_reading_a_request_maps_no_memory(models_dir):
    """Each read from an HTTP connection allocates its buffer first (asyncio: 256 KiB by
    default), and over glibc's mapping threshold, which the server fixes at 128 KiB
    (server/process.py), that was an mmap and a munmap per read. The listener asks for reads
    the heap serves (READ_BYTES): 60 requests on 60 connections map no buffer."""
    with ServerProcess("--models-dir", str(models_dir), *CPU, http=True) as server:
        server.wait_for_port()
        base = f"http://127.0.0.1:{server.http_port}"
        assert call(f"{base}/v2/health/ready").json == {"ready": True}  # warm
        trace = subprocess.Popen(["strace", "-f", "-e", "trace=mmap", "-p", str(server.proc.pid)],
                                 stderr=subprocess.PIPE, text=True)
        try:
            until(lambda: _attached(trace), 30, "strace attached")
            for _ in range(60):
                assert call(f"{base}/v1/models/lenet_bn:classify", sample_png("coat")).status == 200
        finally:
            trace.terminate()
        sizes = [int(m.group(1)) for line in trace.communicate(timeout=30)[1].splitlines()
                 if (m := re.search(r"mmap\(NULL, (\d+),", line))]
        buffers = [size for size in sizes if 128 * 1024 <= size <= 1024 * 1024]
        assert len(buffers) < 6, buffers  # one per read (266,240 bytes each) before


def _attached(trace: subprocess.Popen) -> bool:
    line = trace.stderr.readline()  # "strace: Process N attached" for each thread
    return "attached" in line
