"""Health latency on both protocols while an attack runs (harness/process.py reads the server's
RSS and file descriptors before and after)."""

from __future__ import annotations

import http.client
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

_PROBE_TIMEOUT = 60.0  # seconds: a stalled server's answer still counts, however late


class Probe:
    """One protocol's health, asked every `interval` seconds from a thread of its own over one
    connection opened before the attack (as a load balancer keeps its connections): the
    slowest answer, counting a question still waiting when `stop` is called."""

    def __init__(self, ask, interval: float):
        self._ask = ask
        self._interval = interval
        self._stop = threading.Event()
        self._asked_at: float | None = None
        self.slowest = 0.0
        self.failures: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Probe":
        self._ask()  # the connection is up before the attack starts
        self._thread.start()
        return self

    def stop(self) -> float:
        """The slowest answer (seconds) since `start`; waits for the question in flight."""
        self._stop.set()
        self._thread.join(_PROBE_TIMEOUT + 5)
        return self.slowest

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._asked_at = time.monotonic()
            try:
                self._ask()
            except Exception as e:  # noqa: BLE001 - a failed probe is a finding, not a crash
                self.failures.append(f"{type(e).__name__}: {e}"[:200])
            self.slowest = max(self.slowest, time.monotonic() - self._asked_at)


class HealthWatch:
    """gRPC health ("" service) and HTTP /v2/health/live, probed side by side."""

    def __init__(self, host: str, grpc_port: int, http_port: int, interval: float = 0.05):
        self._channel = grpc.insecure_channel(f"{host}:{grpc_port}")
        stub = health_pb2_grpc.HealthStub(self._channel)
        self._http = _HttpHealth(host, http_port)
        self.grpc = Probe(lambda: stub.Check(health_pb2.HealthCheckRequest(),
                                             timeout=_PROBE_TIMEOUT), interval)
        self.http = Probe(self._http.ask, interval)

    def __enter__(self) -> "HealthWatch":
        self.grpc.start()
        self.http.start()
        return self

    def __exit__(self, *exc) -> None:
        self.grpc.stop()
        self.http.stop()
        self._http.close()
        self._channel.close()


class _HttpHealth:
    """GET /v2/health/live on a kept-alive connection (a new one when the server closed it)."""

    def __init__(self, host: str, port: int):
        self._host, self._port = host, port
        self._connection: http.client.HTTPConnection | None = None

    def ask(self) -> None:
        if self._connection is None:
            self._connection = http.client.HTTPConnection(self._host, self._port,
                                                          timeout=_PROBE_TIMEOUT)
        try:
            self._connection.request("GET", "/v2/health/live")
            response = self._connection.getresponse()
            response.read()
        except Exception:
            self.close()
            raise
        if response.status != 200:
            raise RuntimeError(f"/v2/health/live answered {response.status}")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
