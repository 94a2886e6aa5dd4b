"""Prometheus metrics: what the core and its batchers did, served as text on /metrics.

    metrics = Metrics()
    core = Core(models, observer=metrics.observe_request)
    metrics.watch(core)                      # batch events, queue depths, in-flight, model state
    port = metrics.start("127.0.0.1", 8002)  # 0 binds a free port; returns the bound one
    ...
    metrics.stop()

Each server owns its CollectorRegistry (never prometheus_client's global one), so two servers in
one process, as in the tests, keep their figures apart. The names are a contract (docs/DESIGN.md):

- fmnist_requests_total, fmnist_images_total {model, version, protocol, code}: every request that
  reached the core, by status code name ("OK", "NOT_FOUND", ...). `model` and `version` are the
  served version the core chose, or "" when the request failed before one was chosen (NOT_FOUND,
  a malformed request): a name a client makes up never becomes a label value, so clients cannot
  grow the metrics without bound.
- fmnist_request_duration_seconds {model, version, protocol, code}: the core's time for a request.
- fmnist_decode_duration_seconds {model, version, protocol}: decoding one request's images.
- fmnist_queue_wait_seconds {model, version}: a request's wait in the batch queue (per piece,
  when a request is split over batches).
- fmnist_inference_duration_seconds, fmnist_batch_size {model, version}: one batch's run, and
  the images in it (padding excluded).
- fmnist_requests_in_flight, fmnist_queue_images {model, version}: read when scraped.
- fmnist_model_ready {model, version, provider}: 1 for each served version (with the execution
  provider in use), 0 for a version found but refused or unloaded on request.
- fmnist_saturation {model, version}, and without labels for the whole server: what an
  autoscaler reads (deploy/kubernetes/hpa.yaml): how long new work waits now behind the
  version's running and queued batches over how long one full batch takes, averaged over the
  last second (server/dataplane/saturation.py); 1.0: new work waits as long as a batch takes.
  The server's is its most saturated version's.
- fmnist_models_folder_readable: 0 while the models folder cannot be read (what is loaded keeps
  serving); fmnist_model_file_changed {model, version}: 1 for a served version whose file became
  unreadable or changed on disk since it was loaded (a restart would not serve it as it is).
- fmnist_event_loop_lag_seconds: how late a callback scheduled every 0.1 s ran on the event loop
  that gRPC and HTTP share (server/loop.py); anything that blocks the loop shows here.
- fmnist_accept_failures_total: accepts that failed for want of file descriptors.
- fmnist_http_connections (open now), fmnist_http_connections_refused_total (over
  --max-connections), fmnist_http_malformed_requests_total (requests aiohttp could not parse):
  the HTTP port's guard (server/api/http/listener.py).
- process_* and python_info: the process (ProcessCollector, PlatformCollector).

No `*_created` series: prometheus_client writes one beside every counter and histogram by
default (the time each labelled child was made), which doubles the series a scrape stores and
which nothing here reads (rate() and increase() handle counter resets by themselves); they are
turned off for the process on import, so the --workers parent adds up no such series either.
"""

from __future__ import annotations

import logging

from prometheus_client import (CollectorRegistry, Counter, Histogram, PlatformCollector,
                               ProcessCollector, disable_created_metrics)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from server.api.http.listener import ConnectionGuard
from server.batching.batcher import BatchEvent
from server.dataplane.core import Core
from server.dataplane.types import RequestEvent
from server.loop import EventLoop
from server.metrics.exposition import serve

log = logging.getLogger(__name__)

# 0.5 ms (a small model's batch) .. 10 s (a large batch of a large model on a CPU).
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

_REQUEST = ("model", "version", "protocol", "code")
_MODEL = ("model", "version")
SATURATION = "fmnist_saturation"
SATURATION_HELP = ("How long new work waits now behind the running and queued batches over how "
                   "long one full batch takes, mean of the last second; 1.0: it waits as long as "
                   "a batch takes. No labels: the server (its most saturated model version)")

disable_created_metrics()  # see the module's docstring


class Metrics:
    """The registry, its metrics and the HTTP server that exposes them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter("fmnist_requests", "Requests that reached the core, by status",
                                _REQUEST, registry=r)
        self.images = Counter("fmnist_images", "Images in those requests, by status", _REQUEST,
                              registry=r)
        self.request_seconds = Histogram(
            "fmnist_request_duration_seconds", "The core's time for one request", _REQUEST,
            buckets=LATENCY_BUCKETS, registry=r)
        self.decode_seconds = Histogram(
            "fmnist_decode_duration_seconds", "Decoding one request's images",
            ("model", "version", "protocol"), buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram(
            "fmnist_queue_wait_seconds", "A request's wait in its model's batch queue", _MODEL,
            buckets=LATENCY_BUCKETS, registry=r)
        self.inference_seconds = Histogram(
            "fmnist_inference_duration_seconds", "One batch's run of the model", _MODEL,
            buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("fmnist_batch_size", "Images in one batch (padding excluded)",
                                    _MODEL, buckets=BATCH_BUCKETS, registry=r)
        self.loop_lag = Histogram("fmnist_event_loop_lag_seconds",
                                  "How late a callback due every 0.1 s ran on the event loop",
                                  buckets=LAG_BUCKETS, registry=r)
        # Labelled children bound once per label values (a labels() lookup takes a lock and
        # validates the values: a few us per request on the event loop, saved).
        self._requests_bound: dict[tuple, tuple] = {}
        self._decodes_bound: dict[tuple, object] = {}
        self._batches_bound: dict[tuple, tuple] = {}
        self._http = None
        self.port = 0

    def watch(self, core: Core, loop: EventLoop | None = None,
              http: ConnectionGuard | None = None) -> None:
        """Follow `core`: the batches of every version it serves (also of versions that come
        later), and its gauges, read at each scrape; the event loop's lag and failed accepts;
        the HTTP port's connections and refusals."""
        core.served.batch_observers.append(self._on_batch)
        self.registry.register(_CoreCollector(core))
        if loop is not None:
            loop.lag_observers.append(self.loop_lag.observe)
            self.registry.register(_Counted("fmnist_accept_failures", "Accepts that failed for "
                                            "want of file descriptors",
                                            lambda: loop.accept_failures))
        if http is not None:
            self.registry.register(_HttpCollector(http))

    def observe_request(self, event: RequestEvent) -> None:
        """Core's observer: called once per request as it ends, on the event loop."""
        key = (event.model, event.version, event.protocol, event.code)
        bound = self._requests_bound.get(key)
        if bound is None:
            labels = (event.model, str(event.version) if event.version else "", event.protocol,
                      event.code)
            bound = self._requests_bound[key] = (
                self.requests.labels(*labels), self.images.labels(*labels),
                self.request_seconds.labels(*labels))
        requests, images, seconds = bound
        requests.inc()
        images.inc(event.images)
        seconds.observe(event.seconds)
        if event.decode_seconds is not None:
            decode = self._decodes_bound.get(key[:3])
            if decode is None:
                decode = self._decodes_bound[key[:3]] = self.decode_seconds.labels(
                    event.model, str(event.version) if event.version else "", event.protocol)
            decode.observe(event.decode_seconds)

    def start(self, host: str, port: int) -> int:
        """Serve /metrics on host:port (0: a free port); returns the bound port."""
        self._http = serve(self.registry, host, port)
        self.port = self._http.port
        log.info("metrics on http://%s:%d/metrics", host, self.port,
                 extra={"metrics_port": self.port})
        return self.port

    def stop(self) -> None:
        if self._http is not None:
            self._http.stop()
            self._http = None

    def _on_batch(self, model: str, version: int, event: BatchEvent) -> None:
        bound = self._batches_bound.get((model, version))
        if bound is None:
            labels = (model, str(version))
            bound = self._batches_bound[(model, version)] = (
                self.queue_seconds.labels(*labels), self.inference_seconds.labels(*labels),
                self.batch_size.labels(*labels))
        queue_seconds, inference_seconds, batch_size = bound
        for wait in event.queue_waits:
            queue_seconds.observe(wait)
        inference_seconds.observe(event.seconds)
        batch_size.observe(event.size)


class _Counted:
    """One counter whose value is read, when scraped, from whoever counts it."""

    def __init__(self, name: str, documentation: str, read):
        self._family = (name, documentation)
        self._read = read

    def collect(self):
        counter = CounterMetricFamily(*self._family)
        counter.add_metric((), self._read())
        return [counter]


class _HttpCollector:
    """The HTTP port's guard (server/api/http/listener.py), read when scraped."""

    def __init__(self, guard: ConnectionGuard):
        self.guard = guard

    def collect(self):
        open_ = GaugeMetricFamily("fmnist_http_connections", "HTTP connections open now")
        open_.add_metric((), self.guard.open)
        refused = CounterMetricFamily("fmnist_http_connections_refused",
                                      "HTTP connections closed at once: --max-connections open")
        refused.add_metric((), self.guard.refused)
        malformed = CounterMetricFamily("fmnist_http_malformed_requests",
                                        "HTTP requests that could not be parsed (answered 400)")
        malformed.add_metric((), self.guard.malformed)
        return [open_, refused, malformed]


class _CoreCollector:
    """Gauges read from the core when scraped, so they are never stale."""

    def __init__(self, core: Core):
        self.core = core

    def collect(self):
        in_flight = GaugeMetricFamily("fmnist_requests_in_flight",
                                      "Requests being worked on by the core")
        in_flight.add_metric((), self.core.in_flight)
        queued = GaugeMetricFamily("fmnist_queue_images", "Images waiting in a batch queue",
                                   labels=_MODEL)
        ready = GaugeMetricFamily("fmnist_model_ready",
                                  "1: this version is served on this provider; 0: refused",
                                  labels=("model", "version", "provider"))
        for m, images in self.core.queues():
            queued.add_metric((m.name, str(m.version)), images)
            ready.add_metric((m.name, str(m.version), m.provider), 1)
        for r in self.core.refused():
            ready.add_metric((r.name, str(r.version), ""), 0)
        return [in_flight, queued, ready, self._saturation(), *self._storage()]

    def _saturation(self) -> Metric:
        """One family, two label sets: the server's series without labels (what
        deploy/prometheus-adapter/rules.yaml and deploy/kserve/ select with model="") and one
        per served version."""
        server, versions = self.core.saturation()
        family = Metric(SATURATION, SATURATION_HELP, "gauge")
        family.add_sample(SATURATION, {}, server)
        for m, value in versions:
            family.add_sample(SATURATION, {"model": m.name, "version": str(m.version)}, value)
        return family

    def _storage(self) -> list:
        """The models folder's health as the repository last saw it (none without a folder)."""
        control = self.core.control
        if control is None:
            return []
        folder = GaugeMetricFamily("fmnist_models_folder_readable",
                                   "1: the models folder could be read at the last poll")
        folder.add_metric((), 1 if control.folder_ok else 0)
        changed = GaugeMetricFamily("fmnist_model_file_changed", "1: a served version's file "
                                    "became unreadable or changed since it was loaded",
                                    labels=_MODEL)
        for (name, version), _ in sorted(control.file_problems().items()):
            changed.add_metric((name, str(version)), 1)
        return [folder, changed]
