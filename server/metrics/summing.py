"""One /metrics for every worker of --workers: each worker serves its own on a private localhost
port, and the parent's /metrics adds them up (prometheus_client's multiprocess mode cannot take
the server's collector of gauges read from the core at scrape time).

How each series is combined:
- counters and histograms (buckets, counts, sums): summed. A worker that is replaced leaves its
  last figures in the sum (its final /metrics, sent as it exits; the last scrape when it was
  killed), so a total never goes back and Prometheus sees no counter reset;
- gauges: summed (requests in flight, queued images, resident memory, open fds), except
  fmnist_model_ready, the minimum over the live workers (1: every worker serves that version; a
  worker without it counts 0, as while a reload has reached only some of them),
  fmnist_saturation, the mean over the live workers that report the series (below),
  process_start_time_seconds, the earliest, and process_max_fds and python_info, the largest
  (the same in every worker). The workers write no *_created series (server/metrics/registry.py).

Saturation is a ratio, work in flight over what one worker runs in a batch, so a sum would grow
with the number of workers at the same load. The pod's capacity is the sum of its workers', so
its work over its capacity is their mean: the figure an autoscaler's proportional rule
(desired = ceil(pods x mean / target)) assumes. The maximum would instead report the one worker
that the kernel happened to give the busiest connections (gRPC connections stay on the worker
that accepted them), and new pods would not relieve it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, tuple[tuple[str, str], ...]]  # sample name, sorted labels
COUNTING = ("counter", "histogram", "summary")  # kept from workers that are gone
EVERY = {"fmnist_model_ready"}
MEAN = {"fmnist_saturation"}
SAME = {"process_max_fds", "python_info"}


@dataclass
class Family:
    name: str
    kind: str
    documentation: str
    samples: dict[Key, float] = field(default_factory=dict)


def parse(text: str) -> dict[str, Family]:
    """Prometheus text -> {family name: Family}."""
    out = {}
    for f in text_string_to_metric_families(text):
        family = out.setdefault(f.name, Family(f.name, f.type, f.documentation))
        for s in f.samples:
            family.samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class MetricsSum:
    """The workers' last scrapes, and what those that are gone counted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, dict[str, Family]] = {}
        self._gone: dict[str, Family] = {}
        self._retired: set[int] = set()

    def update(self, worker: int, text: str) -> None:
        parsed = parse(text)
        with self._lock:
            if worker not in self._retired:  # a scrape that raced the worker's exit
                self._live[worker] = parsed

    def retire(self, worker: int, final_text: str | None = None) -> None:
        """`worker` is gone: its counters (from `final_text`, else its last scrape) stay in the
        sum, its gauges leave it."""
        with self._lock:
            last = parse(final_text) if final_text else self._live.get(worker, {})
            self._live.pop(worker, None)
            self._retired.add(worker)
            for name, family in last.items():
                if family.kind not in COUNTING:
                    continue
                kept = self._gone.setdefault(name, Family(name, family.kind,
                                                          family.documentation))
                for key, value in family.samples.items():
                    kept.samples[key] = kept.samples.get(key, 0.0) + value

    def families(self) -> list[Metric]:
        with self._lock:
            live, gone = list(self._live.values()), dict(self._gone)
        names = list(dict.fromkeys([n for s in live for n in s] + list(gone)))
        return [_combine(name, [s[name] for s in live if name in s], len(live), gone.get(name))
                for name in names]


def _combine(name: str, families: list[Family], workers: int, gone: Family | None) -> Metric:
    first = (families or [gone])[0]
    out = Metric(name, first.documentation, first.kind)
    keys = dict.fromkeys([k for f in families for k in f.samples]
                         + (list(gone.samples) if gone else []))
    for key in keys:
        values = [f.samples[key] for f in families if key in f.samples]
        out.add_sample(key[0], dict(key[1]), _value(name, first.kind, key[0], values, workers,
                                                    gone.samples.get(key, 0.0) if gone else 0.0))
    return out


def _value(family: str, kind: str, sample: str, values: list[float], workers: int,
           gone: float) -> float:
    if family in EVERY:
        return min(values) if len(values) == workers else 0.0
    if family in MEAN:
        return sum(values) / len(values) if values else 0.0
    if sample == "process_start_time_seconds":
        return min(values, default=0.0)
    if family in SAME:
        return max(values, default=0.0)
    return sum(values) + (gone if kind in COUNTING else 0.0)
