"""Bootstrap: load the models, build the asyncio gRPC server with health and reflection, bind.

    server, port = create_server("artifacts/models", port=0, device="cpu")
    server.start()                 # health: SERVING
    ...
    server.stop(grace=10)          # health: NOT_SERVING, new requests refused, in-flight finish

The gRPC server is grpc.aio and runs on an event loop in a thread of its own ("grpc-loop"); the
`Server` object keeps the blocking start/stop/wait shape, so the CLI and tests drive it from
ordinary threads. Health (grpc.health.v1) answers for "" (the whole server),
"fmnist.v1.Classifier" and "fmnist.v1.Classifier/<model>" for every served model. Reflection
lists the Classifier, Health and Reflection services, so grpcurl and friends can discover them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import grpc
from fmnist.v1 import classifier_pb2 as pb
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from inference import grpc_service_pb2 as v2_pb

from server.api import auth
from server.api.classifier import SERVICE_NAME, ClassifierServicer
from server.api.kserve import SERVICE_NAME as V2_SERVICE_NAME, V2Servicer
from server.api.security import Security
from server.api.transport import Transport, grpc_options, service_handler
from server.dataplane.core import Core
from server.dataplane.types import Batching, Limits
from server.errors import StartupError
from server.metrics import Metrics
from server.models.loading import LoadedModel, default_runner_factory
from server.models.providers import ProviderPolicy
from server.models.repository import Repository
from server.models.verify import RunnerFactory

log = logging.getLogger(__name__)

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def model_service_name(model: str) -> str:
    """The health service name of one model, e.g. "fmnist.v1.Classifier/resnet18"."""
    return f"{SERVICE_NAME}/{model}"


class _Loop:
    """An asyncio event loop running in its own thread; `call` runs a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="grpc-loop", daemon=True)
        self.thread.start()

    def call(self, coroutine, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class Server:
    """The gRPC server with its core and health servicer; grpc.Server's start/stop/wait shape."""

    def __init__(self, loop: _Loop, grpc_server: grpc.aio.Server, core: Core,
                 health_servicer, address: str, port: int, repository: Repository | None = None,
                 poll_seconds: float = 0.0):
        self._loop = loop
        self.grpc_server = grpc_server
        self.core = core
        self.health = health_servicer
        self.address = address
        self.port = port
        self.repository = repository
        self._poll_seconds = poll_seconds
        self._stopped = False
        self.metrics: Metrics | None = None  # create_server sets it when metrics are on
        self._serving = False
        self._services = self._current_services()
        self._set_health(self._services, _NOT_SERVING)
        core.on_change.append(self._models_changed)

    def start(self) -> None:
        """Start serving. The batchers were warmed up in create_server, so health goes straight
        to SERVING; then the models folder is watched (when polling is on)."""
        self._loop.call(self.grpc_server.start())
        self._serving = True
        self._set_health(self._services, _SERVING)
        if self.repository is not None:
            self.repository.start(self._poll_seconds)

    def stop(self, grace: float | None = 10.0) -> bool:
        """Health NOT_SERVING, refuse new requests, let those in flight finish (at most `grace`
        seconds), close the sessions. True when every request finished within the grace period.

        While requests are in flight the server stays up as a "lame duck": new Classify calls get
        UNAVAILABLE from the core (retryable elsewhere) rather than whatever the transport says
        once it is stopping. Then the gRPC server stops with what is left of the grace period.
        """
        if self._stopped:
            return True
        self._stopped = True
        self._serving = False
        if self.repository is not None:
            self.repository.stop()
        self._loop.call(self.health.enter_graceful_shutdown())
        self.core.drain()
        log.info("stopping: %d request(s) in flight, grace period %ss", self.core.in_flight, grace)
        deadline = None if grace is None else time.monotonic() + grace
        while self.core.in_flight and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.02)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        cut = self.core.in_flight  # counted before grpc's stop cancels them
        self._loop.call(self.grpc_server.stop(left))
        finished = cut == 0
        if not finished:
            log.warning("grace period over with %d request(s) still running; they were cancelled",
                        cut)
        self.core.close()
        self._loop.close()
        if self.metrics is not None:
            self.metrics.stop()
        return finished

    def _current_services(self) -> list[str]:
        return ["", SERVICE_NAME] + sorted(
            {model_service_name(m.name) for m in self.core.list_models()})

    def _models_changed(self) -> None:
        """Health names follow the models: new ones SERVING, gone ones NOT_SERVING."""
        services = self._current_services()
        gone = sorted(set(self._services) - set(services))
        self._services = services
        if self._serving:
            self._set_health(services, _SERVING)
            self._set_health(gone, _NOT_SERVING)

    def _set_health(self, services: list[str], status: int) -> None:
        async def set_all():
            for service in services:
                await self.health.set(service, status)
        future = asyncio.run_coroutine_threadsafe(set_all(), self._loop.loop)
        if threading.current_thread() is not self._loop.thread:
            future.result()  # from the loop itself (a v2 repository call) it runs right after


def create_server(models_dir: str | Path | None = None, *, host: str = "127.0.0.1", port: int = 0,
                  device: str = "auto", versions: dict[str, set[int]] | None = None,
                  limits: Limits = Limits(), batching: Batching = Batching(),
                  transport: Transport = Transport(), models: list[LoadedModel] | None = None,
                  runner_factory: RunnerFactory | None = None, poll_seconds: float = 0.0,
                  keep_versions: int = 1, security: Security = Security(),
                  metrics_port: int | None = None) -> tuple[Server, int]:
    """Load the models (or take `models`, already loaded), warm their batchers, build and bind.

    Returns (server, bound_port); the server is not started yet. `port=0` binds a free port.
    With a models folder, `poll_seconds` > 0 makes the served versions follow it (see
    server/models/repository.py). `metrics_port` serves Prometheus /metrics on `host` (0: a free port,
    None: no metrics; server/metrics.py). Raises StartupError when it cannot start as asked
    (--device cuda without CUDA, a missing --model-version, a port that cannot be bound).
    """
    repository = None
    if models is None:
        if models_dir is None:
            raise ValueError("create_server needs models_dir or models")
        repository = Repository(
            models_dir, ProviderPolicy(device),
            runner_factory or default_runner_factory,
            versions, keep_versions)
        models = repository.load_all()
    metrics = Metrics() if metrics_port is not None else None
    core = Core(models, limits, batching, repository.refused() if repository else (),
                observer=metrics.observe_request if metrics else None)
    if metrics is not None:
        metrics.watch(core)
    if repository is not None:
        repository.attach(core)
    core.start()
    loop = _Loop()
    address = f"[{host}]" if ":" in host and not host.startswith("[") else host
    try:
        if metrics is not None:
            metrics.start(host, metrics_port)
        grpc_server, health_servicer, bound = loop.call(
            _build(core, transport, f"{address}:{port}", security, repository))
    except BaseException:
        if metrics is not None:
            metrics.stop()
        core.close()
        loop.close()
        raise
    server = Server(loop, grpc_server, core, health_servicer, f"{address}:{bound}", bound,
                    repository, poll_seconds)
    server.metrics = metrics
    return server, bound


async def _build(core: Core, transport: Transport, address: str,
                 security: Security = Security(), repository: Repository | None = None):
    """On the loop: the aio server with the Classifier, health and reflection, bound to `address`."""
    grpc_server = grpc.aio.server(options=grpc_options(transport, core.limits.max_message_bytes),
                                  interceptors=auth.interceptors(security))
    grpc_server.add_generic_rpc_handlers((service_handler(
        SERVICE_NAME, ClassifierServicer(core), pb, transport.request_read_timeout_seconds),))
    grpc_server.add_generic_rpc_handlers((service_handler(  # KServe v2, same port
        V2_SERVICE_NAME, V2Servicer(core, repository), v2_pb,
        transport.request_read_timeout_seconds),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, V2_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), grpc_server)
    try:
        bound = security.add_port(grpc_server, address)  # TLS when configured
    except RuntimeError as e:
        raise StartupError(f"cannot listen on {address}: {e}") from None
    if bound == 0:
        raise StartupError(f"cannot listen on {address} (in use, or not an address here)")
    return grpc_server, health_servicer, bound
