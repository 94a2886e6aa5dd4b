"""Bootstrap: load the models, build the gRPC server with health and reflection, bind the port.

    server, port = create_server("artifacts/models", port=0, device="cpu")
    server.start()                 # health: SERVING
    ...
    server.stop(grace=10)          # health: NOT_SERVING, new requests refused, in-flight finish

Health (grpc.health.v1) answers for "" (the whole server), "fmnist.v1.Classifier" and
"fmnist.v1.Classifier/<model>" for every served model. Reflection lists the Classifier, Health and
Reflection services, so grpcurl and friends can discover and call the server.
"""

from __future__ import annotations

import logging
import time
from concurrent import futures
from pathlib import Path

import grpc
from fmnist.v1 import classifier_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.core import Core, Limits
from server.errors import StartupError
from server.providers import ProviderPolicy
from server.servicer import SERVICE_NAME, ClassifierServicer
from server.store import LoadedModel, RunnerFactory, load_models

log = logging.getLogger("server.app")

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_EXTRA_THREADS = 8  # beyond max_in_flight: health, ListModels and quick refusals stay answered


def model_service_name(model: str) -> str:
    """The health service name of one model, e.g. "fmnist.v1.Classifier/resnet18"."""
    return f"{SERVICE_NAME}/{model}"


class Server:
    """The gRPC server with its core and health servicer; grpc.Server's start/stop/wait shape."""

    def __init__(self, grpc_server: grpc.Server, core: Core, health_servicer: health.HealthServicer,
                 address: str, port: int):
        self.grpc_server = grpc_server
        self.core = core
        self.health = health_servicer
        self.address = address
        self.port = port
        self._services = ["", SERVICE_NAME] + sorted(
            {model_service_name(m.name) for m in core.list_models()})
        for service in self._services:
            self.health.set(service, _NOT_SERVING)

    def start(self) -> None:
        """Start serving. The sessions were created and warmed up in create_server, so health
        goes straight to SERVING."""
        self.grpc_server.start()
        for service in self._services:
            self.health.set(service, _SERVING)

    def stop(self, grace: float | None = 10.0) -> bool:
        """Health NOT_SERVING, refuse new requests, let those in flight finish (at most `grace`
        seconds), close the sessions. True when every request finished within the grace period.

        While requests are in flight the server stays up as a "lame duck": new Classify calls get
        UNAVAILABLE from the core (retryable elsewhere) rather than whatever the transport says
        once it is stopping. Then the gRPC server stops with what is left of the grace period.
        """
        self.health.enter_graceful_shutdown()
        self.core.drain()
        log.info("stopping: %d request(s) in flight, grace period %ss", self.core.in_flight, grace)
        deadline = None if grace is None else time.monotonic() + grace
        while self.core.in_flight and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.02)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.grpc_server.stop(left).wait()
        finished = self.core.in_flight == 0
        if not finished:
            log.warning("grace period over with %d request(s) still running; they were cancelled",
                        self.core.in_flight)
        self.core.close()
        return finished

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc_server.wait_for_termination(timeout)


def create_server(models_dir: str | Path | None = None, *, host: str = "127.0.0.1", port: int = 0,
                  device: str = "auto", versions: dict[str, set[int]] | None = None,
                  limits: Limits = Limits(), models: list[LoadedModel] | None = None,
                  runner_factory: RunnerFactory | None = None,
                  max_workers: int | None = None) -> tuple[Server, int]:
    """Load the models (or take `models`, already loaded), build and bind the server.

    Returns (server, bound_port); the server is not started yet. `port=0` binds a free port.
    Raises StartupError when it cannot start as asked (--device cuda without CUDA, a missing
    --model-version, a port that cannot be bound).
    """
    if models is None:
        if models_dir is None:
            raise ValueError("create_server needs models_dir or models")
        models = load_models(models_dir, ProviderPolicy(device), versions, runner_factory)
    core = Core(models, limits)
    workers = max_workers or limits.max_in_flight + _EXTRA_THREADS
    message_options = [("grpc.max_receive_message_length", limits.max_message_bytes),
                       ("grpc.max_send_message_length", limits.max_message_bytes),
                       ("grpc.so_reuseport", 0)]  # a port in use is an error, not shared
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers,
                                                         thread_name_prefix="rpc"),
                              options=message_options, maximum_concurrent_rpcs=4 * workers)
    pb_grpc.add_ClassifierServicer_to_server(ClassifierServicer(core), grpc_server)
    health_servicer = _add_health(grpc_server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), grpc_server)
    address = f"[{host}]" if ":" in host and not host.startswith("[") else host
    try:
        bound = grpc_server.add_insecure_port(f"{address}:{port}")
    except RuntimeError as e:
        raise StartupError(f"cannot listen on {address}:{port}: {e}") from None
    if bound == 0:
        raise StartupError(f"cannot listen on {address}:{port} (in use, or not an address here)")
    return Server(grpc_server, core, health_servicer, f"{address}:{bound}", bound), bound


def _add_health(grpc_server: grpc.Server) -> health.HealthServicer:
    """The standard health service; Server sets every name NOT_SERVING until start()."""
    servicer = health.HealthServicer(
        experimental_non_blocking=True,
        experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, grpc_server)
    return servicer

