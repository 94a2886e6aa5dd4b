"""Admission: every reason the server turns a request away before it runs, in one place.

A request meets these in order (the dataplane, server/dataplane/core.py, and each model's
batcher, server/batching/batcher.py, consult this module; nothing else refuses work):

1. its size: at most `Limits.max_images_per_request` images, counted before they are converted
   (`Admission.check_image_count`);
2. the server: while draining, UNAVAILABLE (retryable elsewhere); at `max_in_flight` requests
   being worked on, RESOURCE_EXHAUSTED (`Admission.enter`, under one lock, so that once `drain`
   returns, `in_flight` counts every request that will ever run);
3. its deadline, before decoding (`check_deadline`);
4. the pixels being decoded server-wide, which bound the decoders' memory (`PixelBudget`: waits
   for room, then RESOURCE_EXHAUSTED);
5. its model's queue (`check_queue`, from a `QueueQuote` the batcher prices with its cost model):
   RESOURCE_EXHAUSTED with a retry hint when the queue would pass `max_queue_images`;
   DEADLINE_EXCEEDED when even the most optimistic time for what runs before it and for its own
   images passes its deadline; and once queued, a request that can no longer make its deadline
   is dropped unrun (`expired`).

Beside errors and logs, this module imports nothing of the server, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass

from server.errors import DeadlineExceeded, InvalidRequest, Overloaded, Unavailable

DEFAULT_MAX_PIXELS = 4096 * 4096  # one encoded image's width x height, read from its header
BUDGET_WAIT = 5.0  # seconds a decode without a deadline waits for pixel budget before refusing


@dataclass(frozen=True)
class Limits:
    """What the server enforces (ListModels tells clients, so they can size their batches)."""

    max_images_per_request: int = 64
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_request_pixels: int = 4 * DEFAULT_MAX_PIXELS  # all encoded images of one request
    max_decoding_pixels: int = 2 * DEFAULT_MAX_PIXELS  # being decoded at once, server-wide
    max_message_bytes: int = 16 * 1024 * 1024
    max_in_flight: int = 512  # Classify requests being worked on at once; beyond: RESOURCE_EXHAUSTED
    decode_threads: int = 0  # 0: one per core


class Admission:
    """Steps 1-4 for one server; thread-safe."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.pixels = PixelBudget(limits.max_decoding_pixels)
        self._in_flight = 0
        self._draining = False
        self._lock = threading.Lock()

    def check_image_count(self, n: int) -> None:
        if n == 0:
            raise InvalidRequest("no images in the request")
        if n > self.limits.max_images_per_request:
            raise InvalidRequest(f"{n:,} images is over the limit of "
                                 f"{self.limits.max_images_per_request} per request; split them")

    @contextlib.contextmanager
    def entered(self, resolve=None):
        """Count a request in flight for the `with` block, or refuse it (draining, at the
        limit). `resolve`, called under the same lock, picks what the request will use (a
        served version): its failure refuses the request uncounted."""
        with self._lock:
            if self._draining:
                raise Unavailable("the server is shutting down; retry on another instance")
            if self._in_flight >= self.limits.max_in_flight:
                raise Overloaded(f"the server is at its limit of {self.limits.max_in_flight} "
                                 "requests in flight; retry later", retry_after=0.05)
            chosen = resolve() if resolve is not None else None
            self._in_flight += 1
        try:
            yield chosen
        finally:
            with self._lock:
                self._in_flight -= 1

    def drain(self) -> None:
        """From now on, new requests get UNAVAILABLE; those in flight go on."""
        with self._lock:
            self._draining = True

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def in_flight(self) -> int:
        return self._in_flight


def check_deadline(deadline: float | None, when: str) -> None:
    """DEADLINE_EXCEEDED when `deadline` (time.monotonic() seconds) has passed."""
    if deadline is not None and deadline <= time.monotonic():
        raise DeadlineExceeded(f"the deadline passed {when}")


class PixelBudget:
    """The pixels being decoded at once, server-wide. Decoding costs memory in proportion to an
    image's pixels (its decoded frame plus a constant), so this caps the decoders' memory
    whatever mix of requests arrives. One image larger than the whole budget may still decode,
    alone."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"a pixel budget must be positive, got {capacity}")
        self.capacity = capacity
        self._used = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, pixels: int, deadline: float | None):
        """Hold `pixels` of the budget for the `with` block; RESOURCE_EXHAUSTED when no room
        comes before the deadline (without one, within BUDGET_WAIT seconds)."""
        pixels = min(pixels, self.capacity)
        give_up = time.monotonic() + BUDGET_WAIT if deadline is None else deadline
        with self._cond:
            while self._used + pixels > self.capacity:
                left = give_up - time.monotonic()
                if left <= 0:
                    raise Overloaded(f"the server is decoding {self._used:,} pixels, at its limit "
                                     f"of {self.capacity:,}; retry shortly", retry_after=0.1)
                self._cond.wait(left)
            self._used += pixels
        try:
            yield
        finally:
            with self._cond:
                self._used -= pixels
                self._cond.notify_all()


@dataclass(frozen=True)
class QueueQuote:
    """What a model's batcher knows when a request arrives, priced by its cost model."""

    name: str  # the model version, for messages ("lenet_bn v3")
    images: int  # the request's
    queued: int  # images ahead of it
    max_queue: int
    usual_wait: float  # seconds until what is ahead has run, at the usual batch times
    best_time: float  # seconds, at the best batch times, until its own images have run too
    running_left: float  # seconds the running batch has left, at best
    closed: bool = False


def check_queue(quote: QueueQuote, deadline: float | None, now: float) -> None:
    """Step 5: whether the request may join the queue now."""
    if quote.closed:
        raise Unavailable(f"{quote.name} is shutting down; retry on another instance")
    if quote.queued + quote.images > quote.max_queue:
        raise Overloaded(
            f"{quote.name}'s queue is full ({quote.queued} of {quote.max_queue} images "
            f"waiting); retry in about {max(quote.usual_wait, 0.001) * 1000:.0f} ms",
            retry_after=quote.usual_wait)
    if deadline is not None and deadline - now <= quote.best_time:
        raise DeadlineExceeded(
            f"the deadline leaves {max(deadline - now, 0.0) * 1000:.1f} ms, and {quote.name} "
            f"needs at least {quote.best_time * 1000:.1f} ms for these {quote.images} image(s) "
            f"after the {quote.queued} queued ahead of them (and "
            f"{quote.running_left * 1000:.1f} ms left of the running batch)")


def expired(name: str, deadline: float | None, now: float, needed: float,
            waited: float) -> DeadlineExceeded | None:
    """The error for a queued request that cannot finish before its deadline when its batch
    needs `needed` seconds (it is dropped unrun), or None."""
    if deadline is None or deadline - now > needed:
        return None
    return DeadlineExceeded(
        f"the deadline passed while queued for {name} ({waited * 1000:.1f} ms in the queue; a "
        f"batch needs at least {needed * 1000:.1f} ms)")

