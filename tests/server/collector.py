"""Tiny OTLP trace receivers for the tests: a real collector's two front doors, on 127.0.0.1:0.

    with GrpcCollector() as collector:          # OTLP/gRPC: TraceService/Export
        env = collector.environment()           # OTEL_EXPORTER_OTLP_ENDPOINT and _PROTOCOL
        ... run a server with env, send requests ...
        spans = collector.wait_for(lambda spans: ...)

    with HttpCollector() as collector:          # OTLP/HTTP protobuf: POST /v1/traces

Both decode opentelemetry-proto's ExportTraceServiceRequest and keep every span as a `Span`
(ids in hex, attributes as Python values, the resource's attributes beside), so a test asserts
on what the server's real exporter really sent.
"""

from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc

from harness.wait import until

STATUS_ERROR = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR
KIND_SERVER = 2


@dataclass(frozen=True)
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root span
    kind: int
    start: int  # ns since the epoch
    end: int
    attributes: dict
    links: tuple[tuple[str, str], ...]  # (trace id, span id) of each linked span
    status: int  # 0 unset, 1 ok, 2 error
    status_message: str
    resource: dict = field(default_factory=dict)


def _value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def _attributes(pairs) -> dict:
    return {a.key: _value(a.value) for a in pairs}


def spans_of(request: otlp.ExportTraceServiceRequest) -> list[Span]:
    out = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope in resource_spans.scope_spans:
            for s in scope.spans:
                out.append(Span(s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                                s.kind, s.start_time_unix_nano, s.end_time_unix_nano,
                                _attributes(s.attributes),
                                tuple((link.trace_id.hex(), link.span_id.hex())
                                      for link in s.links),
                                s.status.code, s.status.message, resource))
    return out


class _Collector:
    protocol = ""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.exports = 0
        self._lock = threading.Lock()
        self.port = 0

    def receive(self, request: otlp.ExportTraceServiceRequest) -> None:
        with self._lock:
            self.spans.extend(spans_of(request))
            self.exports += 1

    def environment(self, **extra: str) -> dict[str, str]:
        """What turns a server's tracing on towards this collector (spans leave every 50 ms)."""
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.port}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": self.protocol, "OTEL_BSP_SCHEDULE_DELAY": "50",
                **extra}

    def wait_for(self, predicate, timeout: float = 30.0, what: str = "the spans") -> list[Span]:
        """The spans received, once `predicate(spans)` holds."""
        def ready():
            with self._lock:
                spans = list(self.spans)
            return spans if predicate(spans) else None
        return until(ready, timeout, what, every=0.05)

    def named(self, name: str) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if s.name == name]


class _TraceService(otlp_grpc.TraceServiceServicer):
    def __init__(self, collector: "GrpcCollector"):
        self.collector = collector

    def Export(self, request, context):
        self.collector.receive(request)
        return otlp.ExportTraceServiceResponse()


class GrpcCollector(_Collector):
    """OTLP/gRPC: opentelemetry-proto's TraceService on a grpc server."""

    protocol = "grpc"

    def __enter__(self) -> "GrpcCollector":
        self._server = grpc.server(futures.ThreadPoolExecutor(2))
        otlp_grpc.add_TraceServiceServicer_to_server(_TraceService(self), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.stop(None)


class HttpCollector(_Collector):
    """OTLP/HTTP with protobuf bodies: POST /v1/traces."""

    protocol = "http/protobuf"

    def __enter__(self) -> "HttpCollector":
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/traces" or \
                        self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_response(404)
                    self.end_headers()
                    return
                collector.receive(otlp.ExportTraceServiceRequest.FromString(body))
                answer = otlp.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
