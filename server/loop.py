"""The one asyncio event loop that gRPC (grpc.aio) and HTTP (aiohttp) share, in a thread of its
own ("grpc-loop"), and a watch on it.

Everything a client can make the server do on this loop delays every other client of either
protocol, so its health is measured, not assumed: a callback scheduled every `TICK` seconds
notes how late it ran (the lag), which /metrics shows as `fmnist_event_loop_lag_seconds` and
which is logged (at most once a minute) when it passes `STALL` seconds. A stall that some future
change brings shows there, in the soak and in the attack runs, before a user finds it.

The loop's exception handler turns asyncio's "socket.accept() out of system resource" (EMFILE:
the process is out of file descriptors; asyncio retries the accept and reports every failure,
with a traceback) into one line a minute and a count, instead of a flood of tracebacks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from server.logs import Throttle

log = logging.getLogger(__name__)

TICK = 0.1  # seconds between lag measurements
STALL = 1.0  # seconds of lag that are logged
_ACCEPT_FAILED = "socket.accept() out of system resource"


class EventLoop:
    """An asyncio event loop running in its own thread; `call` runs a coroutine there and waits.
    `lag_observers` get each measured lag (seconds), on the loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.lag_observers: list[Callable[[float], None]] = []
        self.accept_failures = 0
        self._stall_log = Throttle(log, 60.0)
        self._accept_log = Throttle(log, 60.0)
        self.loop.set_exception_handler(self._on_exception)
        self.thread = threading.Thread(target=self.loop.run_forever, name="grpc-loop", daemon=True)
        self.thread.start()
        self.loop.call_soon_threadsafe(self._schedule_tick)

    def call(self, coroutine, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()

    def _schedule_tick(self) -> None:
        due = self.loop.time() + TICK
        self.loop.call_at(due, self._tick, due)

    def _tick(self, due: float) -> None:
        lag = max(0.0, self.loop.time() - due)
        for observe in self.lag_observers:
            observe(lag)
        if lag > STALL:
            self._stall_log.log(logging.WARNING, "the event loop ran %.2f s late: something "
                                "blocked it (every gRPC and HTTP request waited)", lag)
        self._schedule_tick()

    def _on_exception(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if context.get("message") == _ACCEPT_FAILED:
            self.accept_failures += 1
            error = context.get("exception")
            self._accept_log.log(logging.ERROR, "cannot accept connections: %s (out of file "
                                 "descriptors; lower --max-connections or raise the file limit)",
                                 getattr(error, "strerror", None) or error)
            return
        loop.default_exception_handler(context)
