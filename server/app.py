"""Bootstrap: bind, load the models, wire the layers, health and reflection.

    server, port = create_server("artifacts/models", port=0, device="cpu")
    server.start()                 # health: SERVING (once it serves a model)
    ...
    server.stop(grace=10)          # health: NOT_SERVING, new requests refused, in-flight finish

The ports are bound first (gRPC on every address of --host, then /metrics), so a port conflict
is a start-up error within a second, not after every model has loaded. The gRPC server is
grpc.aio on an event loop in a thread of its own ("grpc-loop"); the `Server` object keeps the
blocking start/stop shape, so the CLI and tests drive it from ordinary threads. Health
(grpc.health.v1) answers for "" (the whole server), "fmnist.v1.Classifier" and
"fmnist.v1.Classifier/<model>" for every served model; the first two are SERVING only while at
least one model is (a readiness probe must not pass on an empty server). Reflection lists every
service, in both reflection versions.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from fmnist.v1 import classifier_pb2 as pb
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from inference import grpc_service_pb2 as v2_pb

from execution_providers import CudaOptions
from server import __version__
from server.api import binding
from server.api.grpc import auth
from server.api.grpc.classifier import SERVICE_NAME, ClassifierServicer
from server.api.grpc.kserve import SERVICE_NAME as V2_SERVICE_NAME, V2Servicer
from server.api.grpc.reflection import add_reflection
from server.api.grpc.transport import Transport, grpc_options, service_handler
from server.api.http.listener import HttpListener
from server.api.http.service import Service as HttpService
from server.api.security import Security
from server.dataplane import tracing
from server.dataplane.access import Access
from server.dataplane.core import Core
from server.dataplane.tracing import Settings as TracingSettings
from server.dataplane.types import Batching, Limits
from server.errors import StartupError
from server.loop import EventLoop
from server.metrics.registry import Metrics
from server.models.loading import LoadedModel, Loader, default_runner_factory
from server.models.providers import ProviderPolicy
from server.models.repository import Repository
from server.models.scan import looks_like_one_model
from server.models.spec import Refusal
from server.models.verify import RunnerFactory
from server.workers import ports

log = logging.getLogger(__name__)

SERVER_NAME = "fmnist-serve"  # as KServe v2 ServerMetadata names the server
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def model_service_name(model: str) -> str:
    """The health service name of one model, e.g. "fmnist.v1.Classifier/resnet18"."""
    return f"{SERVICE_NAME}/{model}"


@dataclass(frozen=True)
class ServerConfig:
    """Everything `python -m server`'s flags decide (server/cli.py builds it)."""

    host: str = "127.0.0.1"
    port: int = 0
    device: str = "auto"
    cuda_tf32: bool = False  # --cuda-tf32: fp32 on TF32 tensor cores (execution_providers.py)
    versions: dict[str, set[int]] = field(default_factory=dict)  # --model-version pins
    limits: Limits = Limits()
    batching: Batching = Batching()
    transport: Transport = Transport()
    security: Security = Security()
    metrics_port: int | None = None  # 0: a free port; None: no /metrics
    http_port: int | None = None  # HTTP (server/api/http/): 0: a free port; None: no HTTP
    poll_seconds: float = 0.0  # 0: the models folder is read once
    keep_versions: int = 1
    allow_unverified: bool = False  # serve files without a probe (listed as unverified)
    allow_empty: bool = False  # start with no servable model (NOT_SERVING until one comes)
    unready_while_loading: bool = False  # not ready while a new version loads (behind balancers)
    runner_factory: RunnerFactory | None = None
    tracing: TracingSettings | None = None  # None: off (server/dataplane/tracing.py)
    # A worker of --workers (server/workers/): SO_REUSEPORT on the gRPC port, which is bound only
    # once the models are loaded (so no connection waits on a worker that is still loading), and
    # health "" SERVING only once its parent opens the gate (Server.set_gate).
    worker: bool = False
    # A worker's HTTP port: the sockets its parent bound, shared by every worker (inherited).
    http_sockets: tuple[socket.socket, ...] = ()
    metrics_host: str | None = None  # None: `host`


@dataclass
class _Parts:
    """What create_server made, handed to Server in one piece."""

    loop: EventLoop
    grpc_server: grpc.aio.Server
    health: health.aio.HealthServicer
    metrics: Metrics | None
    core: Core | None = None
    http: HttpListener | None = None  # bound in _bind, served from Server.start
    http_service: HttpService | None = None


class Server:
    """The gRPC server with its core and health servicer: start, then stop(grace)."""

    def __init__(self, parts: _Parts, address: str, port: int, poll_seconds: float = 0.0,
                 gate: bool = True):
        self._loop = parts.loop
        self.grpc_server = parts.grpc_server
        self.core = parts.core
        self.health = parts.health
        self.metrics = parts.metrics
        self.control = parts.core.control  # live reload, load and unload (None: no folder)
        self.http, self._http_service = parts.http, parts.http_service
        self.http_port = parts.http.port if parts.http else None
        self.address = address
        self.port = port
        self._poll_seconds = poll_seconds
        self._stopped = False
        self.core.set_gate(gate)  # --workers: the parent's word that every worker serves
        self._services: list[str] = []
        self._health_lock = threading.Lock()
        self.core.served.on_change.append(self._update_health)
        self._update_health()

    def start(self) -> None:
        """Start serving. The batchers were warmed up in create_server, so health goes straight
        to SERVING (with a model to serve); then the models folder is watched (when polling)."""
        self._loop.call(self.grpc_server.start())
        if self.http is not None:
            self._loop.call(self.http.start(self._http_service.app))
            log.info("HTTP on %s://%s:%d/ (the page; the API at /openapi.json)",
                     "https" if self.http.tls else "http", self.address.rsplit(":", 1)[0],
                     self.http_port, extra={"http_port": self.http_port})
        self.core.open()
        self._update_health()
        if self.control is not None:
            self.control.start(self._poll_seconds)

    def stop(self, grace: float | None = 10.0) -> bool:
        """Health NOT_SERVING, refuse new connections and requests, let those in flight finish
        (at most `grace` seconds), close the connections, close the sessions. True when every
        request finished within the grace period.

        Whatever it turns away, a client's retry policy can replay on another replica: a new
        connection is refused (the listener is shut at once); a new call on an open one gets
        UNAVAILABLE from the core, Trailers-Only (api/grpc/transport.py), not yet committed;
        once nothing is in flight, each connection is half-closed, so its client reads what was
        sent to it and sees the connection end, and the calls it sent meanwhile fail
        UNAVAILABLE uncommitted. Only then does the gRPC server stop: its GOAWAY would cancel
        the calls that cross it (CANCELLED, which no retry policy replays). Measured with
        harness/fleet.py (3 replicas, ~1,500 calls/s, SIGTERM to one, 20 times): 33 CANCELLED
        with grpc's stop first, none in this order (docs/serving.md "Running many replicas").
        """
        if self._stopped:
            return True
        self._stopped = True
        if self.control is not None:
            self.control.stop()
        self._loop.call(self.health.enter_graceful_shutdown())
        ports.close_listeners({self.port})
        self.core.drain()
        log.info("stopping: %d request(s) in flight, grace period %ss", self.core.in_flight, grace)
        deadline = None if grace is None else time.monotonic() + grace
        while self._in_flight() and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.02)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        cut = self._in_flight()  # counted before grpc's stop cancels them
        closed = ports.close_connections({self.port})
        log.info("closed %d gRPC connection(s); their clients retry elsewhere", closed)
        if self.http is not None:
            self._loop.call(self.http.stop())
        self._loop.call(self.grpc_server.stop(left))
        if cut:
            log.warning("grace period over with %d request(s) still running; they were cancelled",
                        cut)
        _close(self.core, self._loop, self.metrics)
        return cut == 0

    def stop_accepting_http(self) -> int:
        """Stop accepting HTTP connections, serving those open (a retiring worker); returns how
        many listening sockets were closed."""
        return self._loop.call(self.http.stop_accepting()) if self.http is not None else 0

    @property
    def ready(self) -> bool:
        """Ready but for the --workers gate: what a worker tells its parent."""
        return self.core.not_ready(gate=False) is None

    def set_gate(self, open_: bool) -> None:
        """--workers (server/workers/worker.py): the server is ready only while the gate is
        open, which the parent opens while every worker is ready."""
        self.core.set_gate(open_)
        self._update_health()

    def _in_flight(self) -> int:
        """Requests in the core, or HTTP requests not answered yet (some still being read)."""
        return max(self.core.in_flight, self._http_service.in_flight if self._http_service else 0)

    def _update_health(self) -> None:
        """gRPC health as the dataplane's readiness says (core.not_ready, core.model_ready: the
        one truth every protocol answers from): the server's own names, and one name per served
        model; names of models gone NOT_SERVING."""
        with self._health_lock:
            names = sorted({m.name for m in self.core.list_models()})
            services = {model_service_name(name): self.core.model_ready(name) for name in names}
            gone = sorted(set(self._services) - set(services) - {"", SERVICE_NAME})
            self._services = ["", SERVICE_NAME, *services]
            ready = self.core.ready()
            statuses = {**{s: _NOT_SERVING for s in gone},
                        **{s: _SERVING if ok else _NOT_SERVING for s, ok in services.items()},
                        "": _SERVING if ready else _NOT_SERVING,
                        SERVICE_NAME: _SERVING if ready else _NOT_SERVING}
        self._set_health(statuses)

    def _set_health(self, statuses: dict[str, int]) -> None:
        async def set_all():
            for service, status in statuses.items():
                await self.health.set(service, status)
        future = asyncio.run_coroutine_threadsafe(set_all(), self._loop.loop)
        if threading.current_thread() is not self._loop.thread:
            future.result()  # from the loop itself (a v2 repository call) it runs right after


def create_server(models_dir: str | Path | None = None, *, models: list[LoadedModel] | None = None,
                  config: ServerConfig | None = None, **settings) -> tuple[Server, int]:
    """Bind, load the models (or take `models`, already loaded), warm their batchers, wire.

    `settings` are ServerConfig's fields (or pass `config`). Returns (server, bound_port); the
    server is not started yet. `port=0` binds a free port. With a models folder, `poll_seconds`
    > 0 makes the served versions follow it (server/models/repository.py). `metrics_port` serves
    Prometheus /metrics on `host` (0: a free port, None: no metrics). Raises StartupError when it
    cannot start as asked (a port that cannot be bound, a missing models folder, no servable model
    without allow_empty, --device cuda without CUDA, a missing --model-version).
    """
    config = config or ServerConfig(**settings)
    if models is None and models_dir is None:
        raise ValueError("create_server needs models_dir or models")
    if models is None and not Path(models_dir).is_dir():
        raise StartupError(f"--models-dir {models_dir} "
                           f"{'is not a folder' if Path(models_dir).exists() else 'does not exist'}"
                           " (expected <name>/<version>/model.onnx inside it; `make export` "
                           "writes one)")
    loop = EventLoop()
    parts = None
    try:
        access = config.security.access()  # a token file that cannot be used: before binding
        if config.worker:  # its parent checked the port: listen once loaded
            loaded = _load(models_dir, models, config)
            parts, port = _bind(loop, config, access)
        else:
            parts, port = _bind(loop, config, access)
            loaded = _load(models_dir, models, config)
        repository, models, refused = loaded
        parts.core = Core(models, config.limits, config.batching, refused,
                          observer=parts.metrics.observe_request if parts.metrics else None,
                          repository=repository, server=(SERVER_NAME, __version__),
                          access=access, unready_while_loading=config.unready_while_loading,
                          tracer=tracing.start(config.tracing))
        if parts.metrics is not None:
            parts.metrics.watch(parts.core, loop, parts.http.guard if parts.http else None)
        if parts.http is not None:
            parts.http_service = HttpService(parts.core,
                                             config.transport.request_read_timeout_seconds)
        parts.core.start()
        loop.call(_add_services(parts, config.transport))
    except BaseException:
        if parts is not None:
            loop.call(parts.grpc_server.stop(None))  # frees the ports it bound
            if parts.http is not None:
                parts.http.close()
        _close(parts.core if parts else None, loop, parts.metrics if parts else None)
        raise
    return Server(parts, f"{binding.bracketed(config.host)}:{port}", port,
                  config.poll_seconds, gate=not config.worker), port


def _bind(loop: EventLoop, config: ServerConfig, access: Access) -> tuple[_Parts, int]:
    """The gRPC server bound on every address of the host, /metrics serving and the HTTP port
    bound, before any model loads."""
    async def make():
        server = grpc.aio.server(options=grpc_options(config.transport,
                                                      config.limits.max_message_bytes,
                                                      reuse_port=config.worker),
                                 interceptors=auth.interceptors(access))
        return server, binding.bind(server, config.security, config.host, config.port,
                                    shared=config.worker)

    grpc_server, port = loop.call(make())
    metrics = Metrics() if config.metrics_port is not None else None
    parts = _Parts(loop, grpc_server, health.aio.HealthServicer(), metrics)
    try:
        if metrics is not None:
            metrics.start(config.metrics_host or config.host, config.metrics_port)
        if config.http_port is not None:
            parts.http = HttpListener.bind(
                config.host, config.http_port, config.security,
                config.transport.request_read_timeout_seconds,
                config.transport.max_connection_idle_seconds,
                max_connections=config.transport.max_connections, sockets=config.http_sockets)
    except StartupError:
        loop.call(grpc_server.stop(None))
        if metrics is not None:
            metrics.stop()
        raise
    return parts, port


def _load(models_dir, models: list[LoadedModel] | None, config: ServerConfig
          ) -> tuple[Repository | None, list[LoadedModel], list[Refusal]]:
    """The models to serve, the refusals, and the repository that follows the folder (None:
    the models were given)."""
    if models is not None:
        return None, models, []
    policy = ProviderPolicy(config.device, cuda=CudaOptions(tf32=config.cuda_tf32))
    loader = Loader(policy, config.runner_factory or default_runner_factory,
                    config.allow_unverified)
    repository = Repository(models_dir, loader, config.versions, config.keep_versions)
    try:
        models, refused = repository.load_all()
    except OSError as e:
        raise StartupError(f"cannot read --models-dir {models_dir}: {e.strerror or e}") from None
    if not models and not config.allow_empty:
        reasons = "; ".join(f"{r.name} v{r.version}: {r.reason}" for r in refused)
        hint = (f"; {models_dir} looks like one model's folder (its sub-folders are versions): "
                f"point --models-dir at its parent, {Path(models_dir).resolve().parent}"
                if looks_like_one_model(models_dir) else "")
        raise StartupError(f"no model in {models_dir} could be served ({reasons or 'none found'})"
                           f"{hint}; --allow-empty starts without one (NOT_SERVING until a "
                           "model comes)")
    return repository, models, refused


async def _add_services(parts: _Parts, transport: Transport) -> None:
    """On the loop: fmnist.v1, KServe v2, health and reflection on the bound server."""
    server, timeout = parts.grpc_server, transport.request_read_timeout_seconds
    server.add_generic_rpc_handlers((service_handler(
        SERVICE_NAME, ClassifierServicer(parts.core), pb, timeout),))
    server.add_generic_rpc_handlers((service_handler(  # KServe v2, same port
        V2_SERVICE_NAME, V2Servicer(parts.core), v2_pb, timeout),))
    health_pb2_grpc.add_HealthServicer_to_server(parts.health, server)
    add_reflection(server, (SERVICE_NAME, V2_SERVICE_NAME, health.SERVICE_NAME))


def _close(core: Core | None, loop: EventLoop, metrics: Metrics | None) -> None:
    if core is not None:
        core.close()
        tracing.stop(core.tracer)  # after the batchers: their last spans go too
    loop.close()
    if metrics is not None:
        metrics.stop()
