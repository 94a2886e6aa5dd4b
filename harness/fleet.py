"""N real `python -m server` replicas, each on its own host (a network namespace of
harness/netns.py, its own address, port 50051, /metrics on 8002), that the host reaches as a
client on a cluster reaches pods behind a headless Service (client/balancing.py).

    with Fleet(models_dir, size=3, server_args=("--poll-seconds", "0.2")) as fleet:
        fleet.targets                        # ["10.203.N.11:50051", ...]
        fleet.replicas[1].terminate()        # SIGTERM; .kill() SIGKILL; .restart()
        fleet.replicas[0].requests()         # {"OK": 1234.0, ...} from its /metrics

Each replica serves its own copy of the models folder, so a new version can reach one replica at
a time. Every process and the network are removed when the `with` ends, also when it fails.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.netns import Network
from harness.process import ServerProcess, scrape
from harness.wait import until

GRPC_PORT = 50051
METRICS_PORT = 8002
# One onnxruntime thread and one decode thread each: three replicas share this machine's cores
# as three pods would share a node's.
SERVER_FLAGS = ("--device", "cpu", "--http-port", "0", "--intra-op-threads", "1",
                "--decode-threads", "1", "--log-format", "text")


class Replica:
    """One `python -m server` in its namespace; its last /metrics answer is kept, so that a
    replica that was killed still reports what it had served."""

    def __init__(self, index: int, address: str, models_dir: Path, prefix: tuple[str, ...],
                 server_args: Sequence[str]):
        self.index, self.address, self.models_dir = index, address, models_dir
        self._prefix, self._args = prefix, tuple(server_args)
        self.proc: ServerProcess | None = None
        self._last: dict = {}  # its last /metrics answer
        self.starts = 0

    @property
    def target(self) -> str:
        return f"{self.address}:{GRPC_PORT}"

    def start(self) -> "Replica":
        self._last = {}
        self.starts += 1
        self.proc = ServerProcess("--models-dir", str(self.models_dir), "--host", self.address,
                                  "--port", str(GRPC_PORT), "--metrics-port", str(METRICS_PORT),
                                  *SERVER_FLAGS, *self._args, prefix=self._prefix)
        return self

    def wait_serving(self, timeout: float = 120) -> None:
        """Until it logs that it listens (its models loaded and warmed, health SERVING)."""
        self.proc.wait_for_port(timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.proc.poll() is None

    def requests(self, label: str = "code", code: str | None = None) -> dict[str, float]:
        """fmnist_requests_total summed by `label` (every model and protocol; only `code` when
        given), from /metrics; once the process is gone, what it said last."""
        if self.running:
            try:
                self._last = scrape(METRICS_PORT, self.address)
            except OSError:  # stopping: its /metrics closes before the process ends
                pass
        counts: dict[str, float] = {}
        for labels, value in self._last.get("fmnist_requests_total", []):
            if code is None or labels["code"] == code:
                counts[labels[label]] = counts.get(labels[label], 0.0) + value
        return counts

    def kill(self) -> None:
        self.requests()
        self.proc.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self) -> None:
        """SIGTERM: it drains and exits (wait with `wait_exit`)."""
        self.requests()
        self.proc.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float = 60) -> int:
        """Until the process exits, scraping /metrics meanwhile (the last answer is kept)."""
        until(lambda: self.requests() is not None and not self.running, timeout,
              f"replica {self.index} exiting", every=0.05)
        return self.proc.wait(timeout)

    def restart(self) -> None:
        if self.running:
            self.stop()
        self.start().wait_serving()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.__exit__(None, None, None)

    def watch_health(self) -> "HealthWatch":
        return HealthWatch(self.target).start()

    def health(self, service: str = "") -> int:
        """Its health answer for `service` ("": the server's readiness)."""
        with grpc.insecure_channel(self.target,
                                   options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


class HealthWatch:
    """The replica's readiness (health "") as the client's health checking sees it: a Watch
    stream in a thread, each answer kept with its time.monotonic(); `stop` ends it."""

    def __init__(self, target: str):
        self.seen: list[tuple[float, str]] = []
        self._channel = grpc.insecure_channel(target,
                                              options=[("grpc.use_local_subchannel_pool", 1)])
        self._call = health_pb2_grpc.HealthStub(self._channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=600)
        self._thread = threading.Thread(target=self._read, daemon=True, name="health-watch")

    def start(self) -> "HealthWatch":
        self._thread.start()
        until(lambda: self.seen, 30, "the first health answer")
        return self

    def _read(self) -> None:
        try:
            for answer in self._call:
                name = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
                self.seen.append((time.monotonic(), name))
        except grpc.RpcError:  # stopped, or the replica went away
            pass

    def between(self, start: float, end: float) -> list[str]:
        """The answers in [start, end], with the one in force at `start` first."""
        before = [status for t, status in self.seen if t < start][-1:]
        return before + [status for t, status in self.seen if start <= t <= end]

    def stop(self) -> None:
        self._call.cancel()
        self._thread.join(10)
        self._channel.close()


class Fleet:
    def __init__(self, models_dir: Path, size: int = 3, server_args: Sequence[str] = ()):
        self.models_dir, self.size, self.server_args = Path(models_dir), size, server_args
        self.net: Network | None = None
        self.replicas: list[Replica] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="fleet-"))

    def __enter__(self) -> "Fleet":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def targets(self) -> list[str]:
        return [r.target for r in self.replicas]

    def start(self) -> None:
        """The network, then every replica started at once and waited for."""
        self.net = Network.create(self.size)
        for i in range(self.size):
            models = self.workdir / f"replica{i}" / "models"
            shutil.copytree(self.models_dir, models)
            self.replicas.append(Replica(i, self.net.address(i), models,
                                         self.net.exec_prefix(i), self.server_args))
        for replica in self.replicas:
            replica.start()
        for replica in self.replicas:
            replica.wait_serving()

    def requests(self) -> list[dict[str, float]]:
        return [r.requests() for r in self.replicas]

    def close(self) -> None:
        try:
            for replica in self.replicas:
                replica.stop()
        finally:
            if self.net is not None:
                self.net.remove()
            shutil.rmtree(self.workdir, ignore_errors=True)


def served_since(before: list[dict[str, float]], after: list[dict[str, float]],
                 code: str = "OK") -> list[int]:
    """Per replica, the requests answered with `code` between two `Fleet.requests()` (a replica
    restarted in between counts from its restart)."""
    return [int(a.get(code, 0) - (b.get(code, 0) if a.get(code, 0) >= b.get(code, 0) else 0))
            for b, a in zip(before, after)]

