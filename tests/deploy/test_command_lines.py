"""Each manifest's container command line, run: `python -m server` with the arguments as written
(only the models folder and the ports moved: a temporary copy of the test models, free ports on
127.0.0.1) and the image's environment. Its probes then answer as the manifest expects: the
startup and liveness paths 200 on the HTTP port, the readiness probe's gRPC health name SERVING
on the gRPC port, /metrics where Prometheus is told to scrape. A drain turns readiness off while
liveness stays 200, and ends within the --grace + STOP_MARGIN test_timings.py counts on.
It refuses to start without a model, and serves a version exported while it runs."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import time
import urllib.error
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.process import ServerProcess, free_port
from server.workers.cores import plan
from server.workers.supervisor import STOP_MARGIN
from tests.deploy.manifests import DOCKERFILE, Served, served
from tests.serving_fixtures import models_dir  # noqa: F401 - fixture

pytestmark = pytest.mark.slow
SERVED = served()
SERVING = health_pb2.HealthCheckResponse.SERVING
MOVED = ("--port", "--http-port", "--metrics-port")


def container_env() -> dict[str, str]:
    """The image's ENV, but for the paths that point into the image."""
    pairs = [p.split("=", 1) for line in re.findall(r"^ENV (.*)$", DOCKERFILE.read_text(), re.M)
             for p in line.split()]
    return {k: v for k, v in pairs if k != "PYTHONPATH"}


def as_run_here(s: Served, models) -> tuple[list[str], dict[int, int]]:
    """The container's arguments with the models folder and the ports moved, and
    {port in the manifest: port here}."""
    args = list(s.container["args"])
    ports = {}
    for i, flag in enumerate(args[:-1]):
        if flag == "--models-dir":
            args[i + 1] = str(models)
        elif flag in MOVED:
            ports[int(args[i + 1])] = free_port()
            args[i + 1] = str(ports[int(args[i + 1])])
    return args, ports


class Running:
    """A server started from a container's command line, and its ports by the manifest's."""

    def __init__(self, s: Served, models):
        args, self.ports = as_run_here(s, models)
        self.process = ServerProcess(*args, env=container_env())
        self.models = models

    def wait_serving(self, port: int, timeout: float = 120) -> None:
        """Until the health service's "" is SERVING (Watch: told, not polled)."""
        with grpc.insecure_channel(f"127.0.0.1:{self.ports[port]}") as channel:
            for answer in health_pb2_grpc.HealthStub(channel).Watch(
                    health_pb2.HealthCheckRequest(service=""), timeout=timeout,
                    wait_for_ready=True):
                if answer.status == SERVING:
                    return

    def health(self, port: int, service: str) -> int | None:
        """The health status of `service`, None when the port does not answer."""
        with grpc.insecure_channel(f"127.0.0.1:{self.ports[port]}") as channel:
            try:
                return health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=10).status
            except grpc.RpcError:
                return None

    def get(self, port: int, path: str) -> int | None:
        """An HTTP GET's status, None when the port does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[port]}{path}",
                                        timeout=10) as answer:
                return answer.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    def probe(self, s: Served, probe: dict):
        """What the kubelet's probe gets: a health status (grpc) or an HTTP status."""
        if "grpc" in probe:
            return self.health(s.port(probe["grpc"]["port"]), probe["grpc"].get("service", ""))
        return self.get(s.port(probe["httpGet"]["port"]), probe["httpGet"]["path"])


@pytest.fixture(scope="module")
def running(models_dir, tmp_path_factory):  # noqa: F811
    """One server per distinct command line (they are one today), started on first use."""
    started: dict[tuple, Running] = {}

    def start(s: Served) -> Running:
        key = tuple(s.container["args"])
        if key not in started:
            models = tmp_path_factory.mktemp("models") / "models"
            shutil.copytree(models_dir, models)
            started[key] = Running(s, models)
            started[key].wait_serving(s.args.port)
        return started[key]

    yield start
    for r in started.values():
        r.process.__exit__(None, None, None)
        assert '"level": "ERROR"' not in r.process.log


@pytest.mark.parametrize("where", SERVED)
def test_the_probes_answer_as_the_manifest_expects(where, running):
    s = SERVED[where]
    server = running(s)
    c = s.container
    assert server.probe(s, c["readinessProbe"]) == SERVING
    assert server.probe(s, c["livenessProbe"]) == 200
    assert server.probe(s, c["startupProbe"]) == 200
    assert server.get(s.args.metrics_port, "/metrics") == 200


def test_it_serves_a_version_exported_while_it_runs(running):
    s = SERVED["Deployment fmnist-serve"]
    server = running(s)
    shutil.copytree(server.models / "lenet_bn" / "1", server.models / "lenet_bn" / "2")
    server.process.wait_for_log("now serving lenet_bn v2", timeout=s.args.poll_seconds + 60)


def test_the_metrics_carry_the_series_the_autoscalers_read(running):
    s = SERVED["Deployment fmnist-serve"]
    server = running(s)
    with urllib.request.urlopen(
            f"http://127.0.0.1:{server.ports[s.args.metrics_port]}/metrics") as answer:
        text = answer.read().decode()
    if "fmnist_saturation" not in text:
        pytest.skip("the server exports no fmnist_saturation yet (its gauge is being added)")
    server_wide = re.findall(r"^fmnist_saturation(?:\{([^}]*)\})? ", text, re.M)
    assert any("model=" not in labels for labels in server_wide), server_wide


def test_no_model_means_no_start(tmp_path):
    """Without --allow-empty the container exits 1 (the pod restarts and says why) rather than
    waiting unready."""
    s = SERVED["Deployment fmnist-serve"]
    (tmp_path / "empty").mkdir()
    args, _ = as_run_here(s, tmp_path / "empty")
    with ServerProcess(*args, env=container_env()) as server:
        assert server.wait(60) == 1
    assert "no model in" in server.log


def hold_a_request(port: int) -> socket.socket:
    """An HTTP request in flight: headers sent, the server's 100 Continue received, no body."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=30)
    conn.sendall(b"POST /v2/models/lenet_bn/infer HTTP/1.1\r\nHost: fmnist\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 64\r\n"
                 b"Expect: 100-continue\r\n\r\n")
    assert conn.recv(64).startswith(b"HTTP/1.1 100")
    return conn


def next_status(watch) -> int | None:
    """The next status a health Watch sends, None when its stream ends (the worker exited)."""
    try:
        return next(watch).status
    except grpc.RpcError:
        return None


def test_a_drain_turns_readiness_off_keeps_liveness_and_ends_within_grace(models_dir,  # noqa: F811
                                                                          tmp_path):
    s = SERVED["Deployment fmnist-serve"]
    c = s.container
    assert c["readinessProbe"]["grpc"]["service"] == ""  # the name watched below
    shutil.copytree(models_dir, tmp_path / "models")
    server = Running(s, tmp_path / "models")
    with server.process, grpc.insecure_channel(
            f"127.0.0.1:{server.ports[s.args.port]}") as channel:
        server.wait_serving(s.args.port)
        held = hold_a_request(server.ports[s.args.http_port])
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=s.args.grace)
        assert next(watch).status == SERVING
        server.process.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert next_status(watch) != SERVING  # told at once (or the stream ends)
        assert server.probe(s, c["readinessProbe"]) != SERVING
        # HTTP readiness turns with each worker's own drain, which starts within a quarter of a
        # second of the signal (server/workers/worker.py): once every worker says it stopped
        server.process.wait_for_log("stopping:", times=plan(s.args).workers)
        assert server.get(s.args.http_port, "/v2/health/ready") != 200
        assert server.probe(s, c["livenessProbe"]) == 200
        assert server.process.proc.poll() is None  # the held request keeps it draining
        server.process.wait(s.args.grace + STOP_MARGIN + 30)
        took = time.monotonic() - signalled
        held.close()
    # what test_timings.py budgets for after SIGTERM (measured: 11.3 s on 2 cores, the
    # workers' watchdog at --grace + 0.9 s)
    assert took <= s.args.grace + STOP_MARGIN, f"exited {took:.1f} s after SIGTERM"
