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

from server.core import Batching, Core, Limits
from server.errors import StartupError
from server.providers import ProviderPolicy
from server.security import Security
from server.servicer import SERVICE_NAME, ClassifierServicer
from server.store import LoadedModel, Refusal, RunnerFactory, load_models
from server.transport import Transport, grpc_options, service_handler

log = logging.getLogger("server.app")

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def model_service_name(model: str) -> str:
    """The health service name of one model, e.g. "fmnist.v1.Classifier/resnet18"."""
    return f"{SERVICE_NAME}/{model}"


class _Loop:
    """An asyncio event loop running in its own thread; `call` runs a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="grpc-loop", daemon=True)
        self._thread.start()

    def call(self, coroutine, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class Server:
    """The gRPC server with its core and health servicer; grpc.Server's start/stop/wait shape."""

    def __init__(self, loop: _Loop, grpc_server: grpc.aio.Server, core: Core,
                 health_servicer, address: str, port: int):
        self._loop = loop
        self.grpc_server = grpc_server
        self.core = core
        self.health = health_servicer
        self.address = address
        self.port = port
        self._stopped = False
        self._services = ["", SERVICE_NAME] + sorted(
            {model_service_name(m.name) for m in core.list_models()})
        self._set_health(_NOT_SERVING)

    def start(self) -> None:
        """Start serving. The batchers were warmed up in create_server, so health goes straight
        to SERVING."""
        self._loop.call(self.grpc_server.start())
        self._set_health(_SERVING)

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
        self._loop.call(self.health.enter_graceful_shutdown())
        self.core.drain()
        log.info("stopping: %d request(s) in flight, grace period %ss", self.core.in_flight, grace)
        deadline = None if grace is None else time.monotonic() + grace
        while self.core.in_flight and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.02)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        self._loop.call(self.grpc_server.stop(left))
        finished = self.core.in_flight == 0
        if not finished:
            log.warning("grace period over with %d request(s) still running; they were cancelled",
                        self.core.in_flight)
        self.core.close()
        self._loop.close()
        return finished

    def _set_health(self, status: int) -> None:
        async def set_all():
            for service in self._services:
                await self.health.set(service, status)
        self._loop.call(set_all())


def create_server(models_dir: str | Path | None = None, *, host: str = "127.0.0.1", port: int = 0,
                  device: str = "auto", versions: dict[str, set[int]] | None = None,
                  limits: Limits = Limits(), batching: Batching = Batching(),
                  transport: Transport = Transport(), models: list[LoadedModel] | None = None,
                  runner_factory: RunnerFactory | None = None,
                  security: Security = Security()) -> tuple[Server, int]:
    """Load the models (or take `models`, already loaded), warm their batchers, build and bind.

    Returns (server, bound_port); the server is not started yet. `port=0` binds a free port.
    Raises StartupError when it cannot start as asked (--device cuda without CUDA, a missing
    --model-version, a port that cannot be bound).
    """
    refused: list[Refusal] = []
    if models is None:
        if models_dir is None:
            raise ValueError("create_server needs models_dir or models")
        models = load_models(models_dir, ProviderPolicy(device), versions, runner_factory, refused)
    core = Core(models, limits, batching, refused)
    core.start()
    loop = _Loop()
    address = f"[{host}]" if ":" in host and not host.startswith("[") else host
    try:
        grpc_server, health_servicer, bound = loop.call(
            _build(core, transport, f"{address}:{port}", security))
    except BaseException:
        core.close()
        loop.close()
        raise
    return Server(loop, grpc_server, core, health_servicer, f"{address}:{bound}", bound), bound


async def _build(core: Core, transport: Transport, address: str,
                 security: Security = Security()):
    """On the loop: the aio server with the Classifier, health and reflection, bound to `address`."""
    grpc_server = grpc.aio.server(options=grpc_options(transport, core.limits.max_message_bytes),
                                  interceptors=security.interceptors())
    grpc_server.add_generic_rpc_handlers((service_handler(
        SERVICE_NAME, ClassifierServicer(core), pb, transport.request_read_timeout_seconds),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), grpc_server)
    try:
        bound = security.add_port(grpc_server, address)  # TLS when configured
    except RuntimeError as e:
        raise StartupError(f"cannot listen on {address}: {e}") from None
    if bound == 0:
        raise StartupError(f"cannot listen on {address} (in use, or not an address here)")
    return grpc_server, health_servicer, bound
