"""A stand-in OTLP/gRPC collector for `make bench-serve`'s tracing cells: it accepts
TraceService/Export calls and counts them and their bytes, without decoding them (a real
collector does more per span, elsewhere; here it shares the cores with the server measured, so it
does as little as it can).

    with Collector() as collector:
        env = collector.environment()      # OTEL_EXPORTER_OTLP_ENDPOINT, _PROTOCOL=grpc
        ...
        collector.exports, collector.bytes
"""

from __future__ import annotations

import threading
from concurrent import futures

import grpc

EXPORT = "Export"
SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


class Collector:
    def __init__(self) -> None:
        self.exports = 0
        self.bytes = 0
        self._lock = threading.Lock()
        self.port = 0

    def __enter__(self) -> "Collector":
        self._server = grpc.server(futures.ThreadPoolExecutor(1))
        handler = grpc.unary_unary_rpc_method_handler(
            self._export, request_deserializer=None,  # the raw bytes
            response_serializer=lambda empty: b"")  # an empty ExportTraceServiceResponse
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            SERVICE, {EXPORT: handler}),))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.stop(None)

    def _export(self, data: bytes, context) -> None:
        with self._lock:
            self.exports += 1
            self.bytes += len(data)

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.exports, self.bytes

    def environment(self, ratio: str) -> dict[str, str]:
        """A server's tracing towards this collector, sampling `ratio` of the requests (that
        start their own trace: h2load sends no traceparent)."""
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.port}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_TRACES_SAMPLER": "traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": ratio}
