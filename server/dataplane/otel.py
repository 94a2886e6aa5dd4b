"""The OpenTelemetry side of tracing (tracing.py imports this only when tracing is on).

Spans, all of one trace per request unless said otherwise (attributes under `fmnist.`):
- the request, SERVER kind, named "<protocol> <operation>" ("fmnist.v1 classify", "v2 infer",
  "http classify", "http infer"): from its arrival to the dataplane's answer; a child of the
  caller's span when it sent W3C `traceparent` (and `tracestate`), else a new trace. protocol,
  request_id, model, version, images, status (the status code name); an error sets the span's
  status to ERROR with "<code>: <message>" (and records the exception when it is INTERNAL);
- its phases, timed by the adapter: `read` (the message's bytes: gRPC's message, HTTP's body),
  `parse` (an HTTP body into the request's values);
- `input` (a KServe v2 input tensor checked and turned into images), `decode` (encoded images in
  the decode pool);
- `queue`: each piece of the request, from joining its model's batch queue to its batch's start;
- `batch`: one per batch that ran (or failed), its own root span in a trace of its own, LINKED to
  the request span of every request it served (a batch serves pieces of many requests, so it
  is no request's child): model, version, provider, size (images run), padded (the size run,
  padding included: CUDA's fixed shapes), padding, requests. It is made only when at least one
  of those requests was sampled, and then always sampled itself (the configured sampler decides
  for requests only).
Spans end on the thread that made them (the event loop; `queue` and `batch` on the batcher's
thread, after the batch ran) and go to a BatchSpanProcessor, whose own thread exports them: an
export never blocks the loop or a batcher, and a collector that cannot be reached costs the
exporter's warnings (at most one a minute here), never a request.
"""

from __future__ import annotations

import logging
import os
import time

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (Decision, Sampler, SamplingResult,
                                              _get_from_env_or_default)
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from cli_text import VERSION
from server.batching.batcher import BatchEvent
from server.dataplane import calls
from server.dataplane.types import RequestEvent

SERVICE = "fmnist-serve"
BATCH = "batch"
_PROPAGATOR = TraceContextTextMapPropagator()
_EXPORTER_LOGGERS = ("opentelemetry.exporter.otlp.proto.grpc.exporter",
                     "opentelemetry.exporter.otlp.proto.http.trace_exporter",
                     "opentelemetry.exporter.otlp.proto.http._common",
                     "opentelemetry.sdk._shared_internal")


class Tracer:
    """One server's tracing: its provider, exporter and processor, and the spans it makes."""

    def __init__(self, settings):
        """`settings`: tracing.Settings (protocol, endpoint, worker)."""
        self.provider = TracerProvider(resource=_resource(settings),
                                       sampler=_BatchesFollowRequests(_get_from_env_or_default()),
                                       shutdown_on_exit=False)
        self.exporter = _exporter(settings)
        self.provider.add_span_processor(BatchSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("fmnist-serve", VERSION)
        _quieten_exporter_logs()
        logging.getLogger(__name__).info(
            "tracing on: OTLP over %s to %s, sampler %s", settings.protocol,
            settings.endpoint or next((os.environ[v] for v in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                                                               "OTEL_EXPORTER_OTLP_ENDPOINT")
                                       if os.environ.get(v)), "the default endpoint"),
            self.provider.sampler.get_description())

    def request(self, operation: str, protocol: str) -> "RequestTrace":
        """The span of the current call's request (begun by its adapter), from its arrival."""
        call = calls.current()
        parent = _PROPAGATOR.extract(call.headers) if call is not None and call.headers else None
        span = self.tracer.start_span(
            f"{protocol} {operation}", context=parent, kind=SpanKind.SERVER,
            start_time=call.started if call is not None else None,
            attributes={"fmnist.protocol": protocol,
                        "fmnist.request_id": call.id if call is not None else ""})
        context = span.get_span_context()
        if call is not None:
            call.trace_id = format(context.trace_id, "032x")
        trace_ = RequestTrace(self, span)
        if trace_.recording and call is not None:
            for name, started, ended in call.phases:
                self.tracer.start_span(name, context=trace_.context,
                                       start_time=started).end(end_time=ended)
        return trace_

    def on_batch(self, model: str, version: int, event: BatchEvent) -> None:
        """Served.batch_observers: the queue spans of the batch's sampled pieces and the batch
        span linked to their requests (on the batcher's thread)."""
        traces = [t for t in event.tags if t is not None]
        if not traces:
            return
        started = event.started_ns
        for tag, wait in zip(event.tags, event.queue_waits):
            if tag is not None:
                self.tracer.start_span("queue", context=tag.context,
                                       start_time=started - int(wait * 1e9)).end(started)
        requests = list(dict.fromkeys(traces))
        span = self.tracer.start_span(BATCH, context=None, links=[Link(t.span_context)
                                                                   for t in requests],
                                      start_time=started, attributes={
            "fmnist.model": model, "fmnist.version": version, "fmnist.provider": event.provider,
            "fmnist.size": event.size, "fmnist.padded": event.padded,
            "fmnist.padding": event.padded - event.size, "fmnist.requests": len(requests)})
        if not event.ok:
            span.set_status(Status(StatusCode.ERROR, event.error or "the batch failed"))
        span.end(started + int(event.seconds * 1e9))

    def shutdown(self, flush_seconds: float) -> None:
        """Export what is queued (at most `flush_seconds`), then stop: the exporter first, which
        ends a retry's wait (else an unreachable collector holds the processor for the
        exporter's whole timeout, 10 s by default)."""
        self.provider.force_flush(int(flush_seconds * 1000))
        self.exporter.shutdown()
        self.provider.shutdown()


class RequestTrace:
    """A request's span and what its children need; `tag` goes with its images to the batcher
    (None unless sampled: a batch makes spans only for sampled requests)."""

    __slots__ = ("tracer", "span", "span_context", "context", "recording", "tag")

    def __init__(self, tracer: Tracer, span):
        self.tracer = tracer
        self.span = span
        self.span_context = span.get_span_context()
        self.recording = span.is_recording()
        self.context = trace.set_span_in_context(span) if self.recording else None
        self.tag = self if self.recording else None

    def child(self, name: str) -> "_Child | _NoSpan":
        return _Child(self.tracer.tracer, name, self.context) if self.recording else _NO_SPAN

    def end(self, event: RequestEvent, error: BaseException | None) -> None:
        span = self.span
        if self.recording:
            if event.model:  # "" when it failed before a served version was chosen
                span.set_attributes({"fmnist.model": event.model,
                                     "fmnist.version": event.version})
            span.set_attributes({"fmnist.images": event.images, "fmnist.status": event.code})
            if event.code != "OK":
                span.set_status(Status(StatusCode.ERROR, f"{event.code}: {error}"))
                if event.code == "INTERNAL" and error is not None:
                    span.record_exception(error)
        span.end()


class _Child:
    """A child span for a `with` block; ERROR with the exception's message if it raises."""

    __slots__ = ("tracer", "name", "context", "span")

    def __init__(self, tracer, name: str, context):
        self.tracer, self.name, self.context = tracer, name, context

    def __enter__(self):
        self.span = self.tracer.start_span(self.name, context=self.context)
        return self.span

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None:
            self.span.set_status(Status(StatusCode.ERROR, f"{kind.__name__}: {error}"))
        self.span.end()


class _NoSpan:
    def __enter__(self):
        return None

    def __exit__(self, *exc) -> None:
        return None


_NO_SPAN = _NoSpan()


class _BatchesFollowRequests(Sampler):
    """The configured sampler for every span but `batch`, which is made only for batches that
    served a sampled request and is then always sampled."""

    def __init__(self, requests: Sampler):
        self.requests = requests

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None,
                      links=None, trace_state=None) -> SamplingResult:
        if name == BATCH and links:
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
        return self.requests.should_sample(parent_context, trace_id, name, kind, attributes,
                                           links, trace_state)

    def get_description(self) -> str:
        return self.requests.get_description()


def _resource(settings) -> Resource:
    """The SDK's resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES), service `fmnist-serve`
    unless they name one, and the worker's slot under --workers."""
    extra = {"process.pid": os.getpid()}
    if settings.worker is not None:
        extra["fmnist.worker"] = settings.worker
    resource = Resource.create(extra)
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE}))
    return resource


def _exporter(settings):
    """The OTLP span exporter for the protocol; the endpoint from --otlp-endpoint, else the
    exporter reads the OTEL_EXPORTER_OTLP_* variables itself."""
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter(endpoint=settings.endpoint)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    endpoint = settings.endpoint and f"{settings.endpoint.rstrip('/')}/v1/traces"
    return OTLPSpanExporter(endpoint=endpoint)


def _quieten_exporter_logs() -> None:
    """An unreachable collector makes the exporter warn at every try of every export: keep one
    line a minute of it, with a count of the rest."""
    for name in _EXPORTER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _ThrottleFilter) for f in logger.filters):
            logger.addFilter(_ThrottleFilter(logger))


class _ThrottleFilter(logging.Filter):
    """Lets one warning through a minute (server/logs.py's Throttle, for a logger we do not
    call ourselves)."""

    def __init__(self, logger: logging.Logger):
        super().__init__()
        self._last = -60.0
        self._quiet = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now = time.monotonic()
        if now - self._last < 60.0:
            self._quiet += 1
            return False
        if self._quiet:
            record.msg = f"{record.msg} (and {self._quiet:,} more exporter warnings like it)"
            self._quiet = 0
        self._last = now
        return True
