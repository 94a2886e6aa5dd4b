"""The --workers parent's /metrics: every worker's own /metrics fetched and added up (summing.py),
and the parent's own figures: workers by state, restarts by reason, each slot's resident memory.

Each scrape fetches every live worker's private /metrics (127.0.0.1, in parallel, 5 s at most);
a worker that does not answer (it is exiting) keeps its last figures in the sum.
"""

from __future__ import annotations

import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from server.metrics.summing import MetricsSum

STATES = ("starting", "serving", "not_serving", "retiring")
REASONS = ("exited", "rss")


class Worker(Protocol):
    slot: int
    started: bool
    serving: bool
    retiring: bool
    metrics_port: int | None

    @property
    def pid(self) -> int: ...

    def rss_mb(self) -> float | None: ...


class Parent(Protocol):
    """What the collector reads of the supervisor (server/workers/supervisor.py)."""

    sum: MetricsSum
    restarts: dict[str, int]
    slots: list

    def live_workers(self) -> list[Worker]: ...


class WorkersCollector:
    def __init__(self, parent: Parent):
        self.parent = parent

    def describe(self) -> list:
        return []  # registering must not scrape the workers

    def collect(self):
        self._scrape()
        yield from self.parent.sum.families()
        yield from self._own()

    def _scrape(self) -> None:
        live = [w for w in self.parent.live_workers() if w.metrics_port]
        if not live:
            return
        with ThreadPoolExecutor(len(live)) as pool:
            for w, text in zip(live, pool.map(_fetch, live)):
                if text is not None:
                    self.parent.sum.update(w.pid, text)

    def _own(self) -> list:
        workers = self.parent.live_workers()
        states = GaugeMetricFamily("fmnist_workers", "Worker processes, by state",
                                   labels=("state",))
        for state in STATES:
            states.add_metric((state,), sum(_state(w) == state for w in workers))
        restarts = CounterMetricFamily("fmnist_worker_restarts", "Workers started again, by why",
                                       labels=("reason",))
        for reason in REASONS:
            restarts.add_metric((reason,), self.parent.restarts[reason])
        rss = GaugeMetricFamily("fmnist_worker_resident_memory_bytes",
                                "Resident memory of each slot's worker", labels=("worker",))
        for w in self.parent.slots:
            mb = w.rss_mb() if w is not None else None
            if mb is not None:
                rss.add_metric((str(w.slot),), mb * 1024 * 1024)
        return [states, restarts, rss]


def _state(w: Worker) -> str:
    if w.retiring:
        return "retiring"
    if not w.started:
        return "starting"
    return "serving" if w.serving else "not_serving"


def _fetch(w: Worker) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{w.metrics_port}/metrics",
                                    timeout=5) as response:
            return response.read().decode()
    except OSError:  # exiting: its last figures stand
        return None
