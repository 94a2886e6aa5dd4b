"""A bounded load: `calls` Classify calls from `concurrency` callers over one gRPC channel, on an
event loop of its own thread, stopping itself after `calls` or `seconds`, whichever comes first.
Every call is kept (when it started, how long it took, its code, the version that answered), so a
scenario can count failures and read p50/p99, also around a moment (a replica killed, a link cut).

    load = Load(target, options, request, calls=3000).start()
    load.wait_for(1000)                 # 1000 calls finished (a state, not a sleep)
    ...                                 # break something
    summary = load.join()               # Summary: ok, failures by code, p50/p99 ms, versions
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
from fmnist.v1 import classifier_pb2 as pb
from fmnist.v1 import classifier_pb2_grpc as pb_grpc

from harness.channelz import failed_attempts
from harness.wait import until


@dataclass(frozen=True)
class Call:
    started: float  # time.monotonic()
    seconds: float
    code: str  # "OK" or the status code's name
    version: int = 0  # of the model that answered (0: failed)
    details: str = ""  # a failed call's message


@dataclass
class Summary:
    calls: list[Call] = field(default_factory=list)
    retried: int = 0  # tries that failed (the calls that survived them were retried)

    @property
    def failures(self) -> Counter:
        return Counter(c.code for c in self.calls if c.code != "OK")

    @property
    def ok(self) -> int:
        return sum(c.code == "OK" for c in self.calls)

    @property
    def versions(self) -> Counter:
        return Counter(c.version for c in self.calls if c.code == "OK")

    def percentile_ms(self, q: float) -> float:
        """The q-th percentile (0..100) of every call's latency, failed ones included."""
        times = sorted(c.seconds for c in self.calls)
        if not times:
            return float("nan")
        return 1000 * times[min(len(times) - 1, int(q / 100 * len(times)))]

    def between(self, start: float, end: float = float("inf")) -> "Summary":
        """The calls that started in [start, end) (time.monotonic())."""
        return Summary([c for c in self.calls if start <= c.started < end])

    def line(self) -> str:
        failures = ", ".join(f"{code} {n}" for code, n in sorted(self.failures.items()))
        retried = f", {self.retried} failed tries" if self.retried else ""
        return (f"{len(self.calls)} calls, {sum(self.failures.values())} failed"
                f"{f' ({failures})' if failures else ''}{retried}, "
                f"p50 {self.percentile_ms(50):.1f} ms, p99 {self.percentile_ms(99):.1f} ms")


def raw_request(model: str = "lenet_bn") -> pb.ClassifyRequest:
    """One 28x28 image as raw pixels: the cheapest call, so the fleet's own work is small."""
    return pb.ClassifyRequest(model=model, images=[pb.Image(raw=bytes(range(256)) * 3 + bytes(16))])


class Load:
    def __init__(self, target: str, options: list, request: pb.ClassifyRequest, calls: int,
                 concurrency: int = 8, seconds: float = 120, timeout: float = 10):
        self.target, self.request = target, request
        # a channel of its own: subchannels are not shared with another Load's (grpc's global
        # pool would hand over connections, and their reconnect back-off, between loads)
        self.options = list(options) + [("grpc.use_local_subchannel_pool", 1)]
        self.calls, self.concurrency = calls, concurrency
        self.seconds, self.timeout = seconds, timeout
        self.records: list[Call] = []
        self.failed_attempts: dict[str, int] = {}  # per server, tries that failed (channelz)
        self._issued = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True,
                                        name="fleet-load")

    def start(self) -> "Load":
        self._thread.start()
        return self

    @property
    def finished(self) -> int:
        return len(self.records)

    def wait_for(self, finished: int, timeout: float = 120) -> None:
        """Until `finished` calls have ended (or the load has ended)."""
        until(lambda: self.finished >= finished or not self._thread.is_alive(), timeout,
              f"{finished} calls finished")

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> Summary:
        self._thread.join(self.seconds + self.timeout + 30 if timeout is None else timeout)
        if self._thread.is_alive():
            self._stop.set()
            raise AssertionError(f"the load did not stop within its bound ({self.seconds} s)")
        return Summary(list(self.records), sum(self.failed_attempts.values()))

    async def _main(self) -> None:
        end = time.monotonic() + self.seconds
        async with grpc.aio.insecure_channel(self.target, options=self.options) as channel:
            stub = pb_grpc.ClassifierStub(channel)
            await asyncio.gather(*(self._caller(stub, end) for _ in range(self.concurrency)))
            self.failed_attempts = failed_attempts(self.target)

    async def _caller(self, stub, end: float) -> None:
        while self._issued < self.calls and time.monotonic() < end and not self._stop.is_set():
            self._issued += 1
            started = time.monotonic()
            try:
                response = await stub.Classify(self.request, timeout=self.timeout)
                code, version, details = "OK", response.version, ""
            except grpc.aio.AioRpcError as e:
                code, version, details = e.code().name, 0, e.details() or ""
            self.records.append(Call(started, time.monotonic() - started, code, version,
                                     details))
