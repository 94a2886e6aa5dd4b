"""Dynamic batching for one model version: requests' images queue up and run together.

    batcher = Batcher(runner, BatchPolicy(max_batch=32, max_delay=0.002, max_queue_images=256))
    batcher.start()                       # warms every batch size it will use, then serves
    ticket = batcher.submit(images, deadline=time.monotonic() + 1.0)
    out = ticket.future.result()          # RunOutput for exactly these images, in order
    batcher.close()

One thread per batcher takes queued images, up to `max_batch` of them, and runs them as one batch
on the runner; a request larger than `max_batch` is cut into pieces that may ride in different
batches, and its rows are put back together in order. The thread-safe queue and a
concurrent.futures.Future per request keep this free of asyncio and grpc: the core awaits the
future with `asyncio.wrap_future`, tests call `.result()`.

When to run: the batcher expects as many images as its previous batch held plus those that
arrived while it ran (the load it is seeing; capped at `max_batch`): it runs as soon as that many
are waiting, and otherwise waits for them at most `max_delay` past the later of the oldest waiting
image's arrival and the end of the previous batch. So a lone caller never waits (its p50 is the
model's batch-1 time plus the transport), two callers do not wait for a third that never comes,
and 32 closed-loop callers are not split into two half batches that take turns (each half
arriving while the other runs): the batch waits the few ms it takes the other half to come back.

Admission and deadlines (costs come from `CostModel`, learned from every run by batch size):
- `submit` refuses (Overloaded, with a retry hint) when the queue would hold more than
  `max_queue_images`, and (DeadlineExceeded) when even the most optimistic time to run the images
  ahead plus its own exceeds the time left: it never refuses a request that would fit.
- A request whose deadline passes, or that cannot finish before it, or whose future was cancelled
  (the caller went away) leaves the queue when the batcher reaches it and never runs.

On CUDA, batches are padded to fixed sizes (`buckets`: 1, 2, 4, ..., max_batch) so that cuDNN's
algorithm search and onnxruntime's memory planning for every shape happen at warm-up, never on a
user's request. On the CPU shapes are free and padding would only waste work, so batches run at
their own size and warm-up covers batch 1 and `max_batch` (which also seeds the cost model).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from model_contract import SIDE
from server.batching.cost_model import CostModel
from server.errors import Cancelled, DeadlineExceeded, Overloaded, Unavailable
from server.models.providers import CUDA
from server.models.runner import RunOutput, Runner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchPolicy:
    max_batch: int = 32
    max_delay: float = 0.002  # seconds
    max_queue_images: int = 256

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_delay < 0 or self.max_queue_images < 1:
            raise ValueError(f"invalid batching policy {self}")


def buckets(max_batch: int) -> list[int]:
    """1, 2, 4, ... up to and including max_batch: the fixed batch shapes used on CUDA."""
    sizes = [1]
    while sizes[-1] * 2 < max_batch:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] != max_batch:
        sizes.append(max_batch)
    return sizes


@dataclass(frozen=True)
class BatchEvent:
    """One batch that ran (or failed): what statistics and metrics are made of."""

    size: int  # images run, padding excluded
    queue_waits: tuple[float, ...]  # per request piece: seconds from arrival to this batch's start
    seconds: float  # the run itself
    ok: bool


@dataclass
class BatchStats:
    """Cumulative figures of one batcher (v2 ModelStatistics reads them)."""

    batches: int = 0
    failed_batches: int = 0
    images: int = 0
    pieces: int = 0  # request pieces run (what queue_seconds sums over)
    queue_seconds: float = 0.0
    compute_seconds: float = 0.0
    by_size: dict[int, list] = field(default_factory=dict)  # size -> [batches, compute seconds]
    last_batch_at: float = 0.0  # time.time() of the newest batch; 0: none yet

    def add(self, event: BatchEvent) -> None:
        self.batches += 1
        self.failed_batches += not event.ok
        self.images += event.size
        self.pieces += len(event.queue_waits)
        self.queue_seconds += sum(event.queue_waits)
        self.compute_seconds += event.seconds
        entry = self.by_size.setdefault(event.size, [0, 0.0])
        entry[0] += 1
        entry[1] += event.seconds
        self.last_batch_at = time.time()


@dataclass
class _Request:
    images: np.ndarray  # uint8 [n, 1, 28, 28]
    deadline: float | None  # time.monotonic() seconds
    future: Future
    enqueued: float
    probabilities: np.ndarray | None = None
    logits: np.ndarray | None = None
    left: int = 0  # rows not yet computed
    failed: bool = False
    cancelled: bool = False


@dataclass
class _Piece:
    request: _Request
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


class Ticket:
    """A queued request: `future` gets its RunOutput (or the error that stopped it)."""

    def __init__(self, request: _Request):
        self._request = request
        self.future = request.future

    def cancel(self) -> None:
        """The caller went away: what has not run yet never will."""
        self._request.cancelled = True
        self.future.cancel()


class Batcher:
    def __init__(self, runner: Runner, policy: BatchPolicy = BatchPolicy(), name: str = "model"):
        self.runner = runner
        self.policy = policy
        self.name = name
        self.costs = CostModel()
        self.stats = BatchStats()
        self.listeners: list[Callable[[BatchEvent], None]] = []  # called on the batcher thread
        self.pad = runner.provider == CUDA
        self._shapes = buckets(policy.max_batch) if self.pad else sorted({1, policy.max_batch})
        self._queue: collections.deque[_Piece] = collections.deque()
        self._queued_images = 0
        self._running_images = 0
        self._expected_images = 1  # the next batch's size: the last one's plus what came meanwhile
        self._arrived_while_running = 0
        self._free_since = 0.0  # time.monotonic() when the last batch finished
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)

    # --- the API ----------------------------------------------------------------------------

    def start(self) -> None:
        """Warm up every batch shape this batcher will run (timed: seeds the cost model), then
        start the batching thread."""
        for size in self._shapes:
            self.runner.warmup(size)  # first run of a shape: allocations, cuDNN algorithm search
            started = time.perf_counter()
            self.runner.warmup(size)
            self.costs.observe(size, time.perf_counter() - started)
        self._thread.start()

    def submit(self, images: np.ndarray, deadline: float | None = None) -> Ticket:
        """Queue `images` (uint8 [n, 1, 28, 28]); the ticket's future gets their RunOutput."""
        n = len(images)
        request = _Request(images, deadline, Future(), time.monotonic(), left=n)
        with self._cond:
            if self._closed:
                raise Unavailable(f"{self.name} is shutting down; retry on another instance")
            ahead = self._queued_images + self._running_images
            if self._queued_images + n > self.policy.max_queue_images:
                wait = self.costs.expected(ahead, self.policy.max_batch)
                raise Overloaded(
                    f"{self.name}'s queue is full ({self._queued_images} of "
                    f"{self.policy.max_queue_images} images waiting); retry in about "
                    f"{max(wait, 0.001) * 1000:.0f} ms", retry_after=wait)
            if deadline is not None:
                left = deadline - request.enqueued
                needed = self.costs.optimistic(ahead + n, self.policy.max_batch)
                if left <= needed:
                    raise DeadlineExceeded(
                        f"the deadline leaves {max(left, 0.0) * 1000:.1f} ms, and {self.name} "
                        f"needs at least {needed * 1000:.1f} ms for these {n} image(s) and the "
                        f"{ahead} ahead of them")
            self._queue.append(_Piece(request, 0, n))  # _take cuts it at batch boundaries
            self._queued_images += n
            if self._running_images:
                self._arrived_while_running += n
            self._cond.notify()
        return Ticket(request)

    @property
    def queued_images(self) -> int:
        return self._queued_images

    def close(self) -> None:
        """Refuse new work, fail what is still queued (UNAVAILABLE), stop the thread."""
        with self._cond:
            self._closed = True
            pieces = list(self._queue)
            self._queue.clear()
            self._queued_images = 0
            self._cond.notify_all()
        for piece in pieces:
            self._fail(piece.request, Unavailable(f"{self.name} shut down before this ran"))
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()

    # --- the batching thread ----------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            pieces = self._next_batch()
            if pieces is None:
                return
            if pieces:
                self._run(pieces)

    def _next_batch(self) -> list[_Piece] | None:
        """Wait for work, then take up to max_batch images of it; None once closed."""
        max_batch = self.policy.max_batch
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            expected = min(max_batch, self._expected_images)
            if self._queued_images < expected:  # the rest of a batch like the last is on its way
                run_by = max(self._queue[0].request.enqueued,
                             self._free_since) + self.policy.max_delay
                while self._queued_images < expected and not self._closed:
                    left = run_by - time.monotonic()
                    if left <= 0 or not self._cond.wait(left):
                        break
                if self._closed or not self._queue:
                    return None if self._closed else []
            pieces, taken = self._take(max_batch)
            self._queued_images -= taken
            self._running_images = taken
            self._arrived_while_running = 0
        return pieces

    def _take(self, max_batch: int) -> tuple[list[_Piece], int]:
        """Pop pieces until the batch is full, cutting the last one if it does not fit; drop
        requests that were cancelled or cannot finish before their deadline. Under the lock."""
        pieces: list[_Piece] = []
        taken = 0  # images leaving the queue (run or dropped)
        size = 0
        now = time.monotonic()
        while self._queue and size < max_batch:
            piece = self._queue[0]
            request = piece.request
            if request.failed or not self._still_wanted(request, now, max(size + piece.size, 1)):
                self._queue.popleft()
                taken += piece.size
                continue
            room = max_batch - size
            if piece.size > room:  # cut: the rest stays at the head of the queue
                pieces.append(_Piece(request, piece.start, piece.start + room))
                piece.start += room
                taken += room
                size += room
                break
            self._queue.popleft()
            pieces.append(piece)
            taken += piece.size
            size += piece.size
        return pieces, taken

    def _still_wanted(self, request: _Request, now: float, batch: int) -> bool:
        """False (and the request failed) when it was cancelled or cannot make its deadline."""
        future = request.future
        if request.cancelled or future.cancelled() or (
                not future.running() and not future.set_running_or_notify_cancel()):
            self._fail(request, Cancelled(f"the caller cancelled while queued for {self.name}"))
            return False
        if request.deadline is not None:
            left = request.deadline - now
            needed = self.costs.optimistic(batch, self.policy.max_batch)
            if left <= needed:
                self._fail(request, DeadlineExceeded(
                    f"the deadline passed while queued for {self.name} ({(now - request.enqueued) * 1000:.1f} "
                    f"ms in the queue; a batch needs at least {needed * 1000:.1f} ms)"))
                return False
        return True

    def _run(self, pieces: list[_Piece]) -> None:
        images = np.concatenate([p.request.images[p.start:p.stop] for p in pieces])
        n = len(images)
        if self.pad:
            size = next(s for s in self._shapes if s >= n)
            if size > n:
                images = np.concatenate([images, np.zeros((size - n, 1, SIDE, SIDE), np.uint8)])
        now = time.monotonic()
        waits = tuple(now - p.request.enqueued for p in pieces)
        started = time.perf_counter()
        try:
            out = self.runner.run(images)
        except Exception as e:  # noqa: BLE001 - every request in the batch gets the error
            self._record(BatchEvent(n, waits, time.perf_counter() - started, ok=False))
            for piece in pieces:
                self._fail(piece.request, e)
            return
        finally:
            with self._cond:
                self._running_images = 0
                self._expected_images = n + self._arrived_while_running
                self._free_since = time.monotonic()
        seconds = time.perf_counter() - started
        self.costs.observe(len(images), seconds)
        self._record(BatchEvent(n, waits, seconds, ok=True))
        if out.probabilities.shape[0] != len(images) or out.logits.shape[0] != len(images):
            error = RuntimeError(f"{self.name} returned {out.probabilities.shape[0]} rows for "
                                 f"{len(images)} images")
            for piece in pieces:
                self._fail(piece.request, error)
            return
        row = 0
        for piece in pieces:
            self._deliver(piece, out.probabilities[row:row + piece.size],
                          out.logits[row:row + piece.size])
            row += piece.size

    def _record(self, event: BatchEvent) -> None:
        self.stats.add(event)
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - a broken listener must not stop the batcher
                log.exception("batch listener failed for %s", self.name)

    def _deliver(self, piece: _Piece, probabilities: np.ndarray, logits: np.ndarray) -> None:
        request = piece.request
        if request.failed:
            return
        if request.probabilities is None:
            n = len(request.images)
            request.probabilities = np.empty((n, probabilities.shape[1]), probabilities.dtype)
            request.logits = np.empty((n, logits.shape[1]), logits.dtype)
        request.probabilities[piece.start:piece.stop] = probabilities
        request.logits[piece.start:piece.stop] = logits
        request.left -= piece.size
        if request.left == 0:
            request.future.set_result(RunOutput(probabilities=request.probabilities,
                                                logits=request.logits))

    @staticmethod
    def _fail(request: _Request, error: BaseException) -> None:
        if request.failed:
            return
        request.failed = True
        future = request.future
        if future.done() or not (future.running() or future.set_running_or_notify_cancel()):
            return  # cancelled while pending: nobody waits for it
        future.set_exception(error)
