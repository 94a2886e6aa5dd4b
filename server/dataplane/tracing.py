"""Tracing, off unless asked for, and then OpenTelemetry's, configured the standard way.

    settings = tracing.from_environment(os.environ, endpoint=args.otlp_endpoint, worker=slot)
    tracer = tracing.start(settings)       # None when off: nothing of OpenTelemetry is imported
    core = Core(models, tracer=tracer)
    ...
    tracing.stop(tracer)                   # flushes what is left, within a bound

On: `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, or
`OTEL_TRACES_EXPORTER` is `otlp` (`otlp_proto_grpc`, `otlp_proto_http`), or `--otlp-endpoint`
(the same as OTEL_EXPORTER_OTLP_ENDPOINT, and it wins). Off: none of them, or
`OTEL_TRACES_EXPORTER=none`, or `OTEL_SDK_DISABLED=true`. The protocol is
`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` (the default, as in
OpenTelemetry's own Python set-up) or `http/protobuf`. Everything else is the SDK's to read, and
means what it means everywhere: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (the service is
`fmnist-serve` unless they name one), OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG (default
parentbased_always_on), OTEL_BSP_* (the batch span processor), OTEL_EXPORTER_OTLP_* (headers,
timeout, TLS, compression).

When off the dataplane's calls cost an `is None` test: `child(None, ...)` is a shared empty
context manager, and the core makes no span. When on, the spans (server/dataplane/otel.py) are
the request (from its arrival), the phases the adapter timed (`read`, `parse`), `input` (a KServe
v2 tensor turned into images), `decode`, `queue` (each piece's wait for its batch) and `batch`
(one per batch, linked to every request it served).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
EXPORTERS = {"otlp": None, "otlp_proto_grpc": "grpc", "otlp_proto_http": "http/protobuf"}
PROTOCOLS = ("grpc", "http/protobuf")
STOP_SECONDS = 1.0  # the most a stop waits for the last spans to leave (within --grace's watchdog)
_NOTHING = contextlib.nullcontext()


@dataclass(frozen=True)
class Settings:
    protocol: str = "grpc"
    endpoint: str | None = None  # --otlp-endpoint: the base URL, as OTEL_EXPORTER_OTLP_ENDPOINT
    worker: int | None = None  # --workers: this worker's slot, a resource attribute


def from_environment(environ: Mapping[str, str] = os.environ, endpoint: str | None = None,
                     worker: int | None = None) -> Settings | None:
    """The tracing asked for by `environ` (and --otlp-endpoint), or None when it is off;
    ValueError naming the valid values for an exporter or protocol it cannot use."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none" and not endpoint:
        return None
    if exporter and exporter != "none" and exporter not in EXPORTERS:
        raise ValueError(f"OTEL_TRACES_EXPORTER={exporter}: this server exports traces with "
                         f"{', '.join(EXPORTERS)} or none")
    if not (endpoint or exporter in EXPORTERS or any(environ.get(v) for v in ENDPOINTS)):
        return None
    protocol = (EXPORTERS.get(exporter) or environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").strip()
    if protocol not in PROTOCOLS:
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: use grpc or http/protobuf")
    return Settings(protocol, endpoint, worker)


def start(settings: Settings | None):
    """The tracer for `settings` (server/dataplane/otel.py's), or None when tracing is off."""
    if settings is None:
        return None
    from server.dataplane import otel  # only now: OpenTelemetry is imported when tracing is on
    return otel.Tracer(settings)


def stop(tracer, seconds: float = STOP_SECONDS) -> None:
    """Export what is left and close the exporter, waiting at most `seconds` (an unreachable
    collector must not hold a stopping server)."""
    if tracer is None:
        return
    done = threading.Thread(target=tracer.shutdown, args=(seconds * 0.8,), name="tracing-stop",
                            daemon=True)
    done.start()
    done.join(seconds)
    if done.is_alive():
        log.warning("tracing: the last spans could not be exported within %g s; dropped", seconds)


def child(trace, name: str):
    """A span `name` under a request's trace, for a `with` block; nothing when it has none."""
    return _NOTHING if trace is None else trace.child(name)
