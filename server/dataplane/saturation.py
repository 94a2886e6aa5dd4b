"""fmnist_saturation: how long new work waits now, in batches, per served version and for the
server; what an autoscaler reads (deploy/kubernetes/hpa.yaml, deploy/kserve/).

    saturation = Saturation(served)
    saturation.start()                     # a thread samples every TICK seconds
    server, per_version = saturation.read()
    saturation.stop()

A version's saturation is its batch wait over its batch time, averaged over the last WINDOW
samples (one second):
- batch wait: what the version's batcher has ahead of new work, what the running batch has left
  and the queued images in full batches, at the usual batch times (the batcher's cost model; the
  wait admission quotes in its retry hints);
- batch time: the usual time of one full batch (--max-batch), from the same cost model.
So 1.0 means new work now waits as long as a whole batch takes: the batcher can no longer absorb
more load by batching it (a full batch is already ahead); 2.0, twice that; 0 when idle. The
server's saturation is its most saturated version's: that is where new work waits longest.
Sampled, not counted: a request pays nothing for it.

What it does not see: where the model is not the limit. For a small model and single-image
requests one worker's Python (its event loop, under the GIL) runs out before the model does, and
the waiting requests sit in grpc's core, where no Python code can count them (measured with
lenet_bn: p50 0.7 ms at 1 caller, 24 ms at 64, while batches stayed small and their queue empty).
A loop-delay term was tried and dropped: over a batch time of a fraction of a millisecond, the
loop's own wake-up jitter read as saturation on an idle server. There, scale on CPU (one worker
per core: --workers auto) beside this gauge (docs/serving.md "Observability").
"""

from __future__ import annotations

import collections
import logging
import threading

from server.dataplane.served import Served
from server.dataplane.types import ModelView

log = logging.getLogger(__name__)

TICK = 0.1  # seconds between samples
WINDOW = 10  # samples averaged: the last second


class Saturation:
    def __init__(self, served: Served):
        self.served = served
        self._samples: dict[tuple[str, int], collections.deque] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="saturation", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def read(self) -> tuple[float, list[tuple[ModelView, float]]]:
        """(the server's saturation: its most saturated version's, 0 with none; each served
        version's), each the mean of its recent samples."""
        each = []
        for version in self.served.all():
            samples = tuple(self._samples.get((version.view.name, version.view.version), ()))
            each.append((version.view, sum(samples) / len(samples) if samples else 0.0))
        return max((value for _, value in each), default=0.0), each

    def _run(self) -> None:
        while not self._stop.wait(TICK):
            self._sample()

    def _sample(self) -> None:
        served = set()
        for version in self.served.all():
            key = (version.view.name, version.view.version)
            served.add(key)
            wait, batch = version.batcher.wait_now()
            samples = self._samples.get(key)
            if samples is None:
                samples = self._samples[key] = collections.deque(maxlen=WINDOW)
            samples.append(wait / batch if batch > 0 else 0.0)
        for key in set(self._samples) - served:  # versions gone
            del self._samples[key]
