"""Dynamic batching for one model version: requests' images queue up and run together.

    batcher = Batcher(runner, BatchPolicy(max_batch=32, max_delay=0.002, max_queue_images=256))
    batcher.start()                       # warms every batch size it will use, then serves
    ticket = batcher.submit(images, deadline=time.monotonic() + 1.0)
    out = ticket.future.result()          # RunOutput for exactly these images, in order
    ticket = batcher.submit(images, loop=asyncio.get_running_loop())
    out = await ticket.future             # the same, as a future of that event loop
    batcher.close()

One thread per batcher takes queued images, up to `max_batch` of them, and runs them as one batch
on the runner (onnxruntime releases the GIL while it runs: the event loop goes on meanwhile); a
request larger than `max_batch` is cut into pieces that may ride in different batches, and its
rows are put back together in order. A request submitted with `loop` gets an asyncio future of
that loop, and all the futures one batch settles on a loop are set by one `call_soon_threadsafe`:
a batch wakes the loop once, not once per request (each wake-up is a write to the loop's
self-pipe and a pass of its selector; scripts/profile_serve.py found those writes at a fifth of
the batcher thread's samples). Without `loop` the future is a concurrent.futures.Future (for
threads). The thread itself is woken only when what it waits for has arrived, not by every submit.

When to run: the batcher expects as many images as its previous batch held plus those that
arrived while it ran (the load it is seeing; capped at `max_batch`): it runs as soon as that many
are waiting, and otherwise waits for them at most `max_delay` past the later of the oldest waiting
image's arrival and the end of the previous batch. So a lone caller never waits (its p50 is the
model's batch-1 time plus the transport), two callers do not wait for a third that never comes,
and 32 closed-loop callers are not split into two half batches that take turns (each half
arriving while the other runs): the batch waits the few ms it takes the other half to come back.

Admission and deadlines (decided by server/admission.py from this batcher's quote; costs come from
`CostModel`, learned from every run by batch size):
- `submit` refuses (Overloaded, with a retry hint) when the queue would hold more than
  `max_queue_images`, and (DeadlineExceeded) when even the most optimistic time for what runs
  before it and for its own images exceeds the time left: what the running batch has left by
  its best time (less the time it has already run), then the queued images, in full batches.
  Before refusing, it drops the queued requests that can no longer make their deadline (they
  would be dropped unrun anyway) and asks again. So it never refuses a request that would fit.
- A cancelled request (the caller went away) leaves the count of queued images at once: it holds
  no queue capacity and is not counted ahead of anyone. Its images, and those of a request whose
  deadline passes or that cannot finish before it, never run: the batcher drops them when it
  reaches them.

On CUDA, batches are padded to fixed sizes (`buckets`: 1, 2, 4, ..., max_batch) so that cuDNN's
algorithm search and onnxruntime's memory planning for every shape happen at warm-up, never on a
user's request. On the CPU shapes are free and padding would only waste work, so batches run at
their own size and warm-up covers batch 1 and `max_batch` (which also seeds the cost model).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Union

import numpy as np

from execution_providers import CUDA
from model_contract import NUM_CLASSES, SIDE
from server.admission import QueueQuote, check_queue, expired
from server.batching.cost_model import CostModel
from server.errors import Cancelled, DeadlineExceeded, Overloaded, Unavailable
from server.models.runner import RunOutput, Runner

log = logging.getLogger(__name__)

AnyFuture = Union[Future, asyncio.Future]
Outcome = tuple["_Request", Union[RunOutput, BaseException]]  # what a request's future gets


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
    tags: tuple = ()  # per request piece, as queue_waits: the tag its request was submitted with
    started_ns: int = 0  # time.time_ns() as the run began
    padded: int = 0  # the size run, padding included
    provider: str = ""  # the runner's execution provider
    error: str = ""  # why it failed


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


@dataclass(eq=False, slots=True)
class _Request:
    images: np.ndarray  # uint8 [n, 1, 28, 28]
    deadline: float | None  # time.monotonic() seconds
    future: AnyFuture
    loop: asyncio.AbstractEventLoop | None  # the loop `future` belongs to; None: a thread's Future
    enqueued: float
    tag: object  # the submitter's, handed back in each BatchEvent that runs part of it
    queued: int  # images still waiting in the queue, as `queued_images` counts them
    left: int  # rows not yet computed
    probabilities: np.ndarray | None = None
    logits: np.ndarray | None = None
    done: bool = False  # its outcome is decided (answered, failed or dropped)
    cancelled: bool = False


@dataclass(slots=True)
class _Piece:
    request: _Request
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


class Ticket:
    """A queued request: `future` gets its RunOutput (or the error that stopped it)."""

    def __init__(self, batcher: "Batcher", request: _Request):
        self._batcher = batcher
        self._request = request
        self.future = request.future

    def cancel(self) -> None:
        """The caller went away: what has not run yet never will, and stops counting as queued.
        From the future's own loop when it has one."""
        self._batcher._cancel(self._request)
        self.future.cancel()


class Batcher:
    def __init__(self, runner: Runner, policy: BatchPolicy = BatchPolicy(), name: str = "model",
                 admit: Callable[[QueueQuote, float | None, float], None] = check_queue):
        """`admit` decides whether a request may join the queue (server/admission.py's
        check_queue: the server's one admission policy)."""
        self.runner = runner
        self._admit_queue = admit
        self.policy = policy
        self.name = name
        self.costs = CostModel()
        self.stats = BatchStats()
        self.listeners: list[Callable[[BatchEvent], None]] = []  # called on the batcher thread
        self.pad = runner.provider == CUDA
        self._shapes = buckets(policy.max_batch) if self.pad else [1]  # the shapes warmed
        self._queue: collections.deque[_Piece] = collections.deque()
        self._queued_images = 0  # of requests still wanted (cancelled ones leave it at once)
        self._earliest_deadline = math.inf  # at most the earliest deadline in the queue
        self._running_images = 0
        self._running_since = 0.0  # time.monotonic() when the running batch was taken
        self._expected_images = 1  # the next batch's size: the last one's plus what came meanwhile
        self._arrived_while_running = 0
        self._free_since = 0.0  # time.monotonic() when the last batch finished
        self._waiting_for = 0  # queued images the thread is waiting for (0: it is not waiting)
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)

    # --- the API ----------------------------------------------------------------------------

    def start(self) -> None:
        """Warm up the batch shapes this batcher will run (timed: seeds the cost model), then
        start the batching thread. On CUDA each padded shape runs untimed first (its first run
        is cuDNN's algorithm search), then timed. On the CPU only batch 1 runs: there a larger
        shape's first run is as fast as its next once the session has run (within 10% at batch
        32 for every demo model), and the cost model prices a size it has not seen from those it
        has until real batches teach it. Warming batch 32 too took 0.9 s of a 2.3 s start with
        the 8 demo models on 2 cores, and 1.7 s of a --workers 2 worker's replacement."""
        for size in self._shapes:
            if self.pad:
                self.runner.warmup(size)
            started = time.perf_counter()
            self.runner.warmup(size)
            self.costs.observe(size, time.perf_counter() - started)
        self._thread.start()

    def submit(self, images: np.ndarray, deadline: float | None = None,
               loop: asyncio.AbstractEventLoop | None = None, tag: object = None) -> Ticket:
        """Queue `images` (uint8 [n, 1, 28, 28]); the ticket's future gets their RunOutput: an
        asyncio future of `loop` (call from that loop), else a concurrent.futures.Future.
        `tag`: anything, handed back in the BatchEvent of each batch that runs some of them (the
        dataplane's tracing links a batch to its requests by it)."""
        n = len(images)
        now = time.monotonic()
        request = _Request(images, deadline, Future() if loop is None else loop.create_future(),
                           loop, now, tag, queued=n, left=n)
        dropped: list[Outcome] = []
        try:
            with self._cond:
                try:
                    self._admit(request, now)
                except (Overloaded, DeadlineExceeded):
                    dropped = self._drop_expired(now) if self._fits_alone(request, now) else []
                    if not dropped:
                        raise
                    self._admit(request, now)  # again, without the requests that cannot run
                self._enqueue(request)
        finally:
            _settle(dropped)
        return Ticket(self, request)

    @property
    def queued_images(self) -> int:
        return self._queued_images

    def wait_now(self) -> tuple[float, float]:
        """(seconds new work would wait now: what the running batch has left and the queued
        images in full batches, at the usual times (the wait admission quotes); seconds one
        full batch usually takes), for the saturation gauge (server/dataplane/saturation.py)."""
        max_batch = self.policy.max_batch
        with self._cond:
            now = time.monotonic()
            wait = (self._running_left(now, best=False)
                    + self.costs.expected(self._queued_images, max_batch))
            return wait, self.costs.expected(max_batch, max_batch)

    @property
    def waiting_for(self) -> int:
        """How many queued images the batching thread waits for before it takes a batch: 1 while
        idle, the expected batch size while it waits for a batch to fill, 0 otherwise."""
        return self._waiting_for

    def close(self) -> None:
        """Refuse new work, fail what is still queued (UNAVAILABLE), stop the thread."""
        with self._cond:
            self._closed = True
            outcomes = [(piece.request, Unavailable(f"{self.name} shut down before this ran"))
                        for piece in self._queue if self._finish(piece.request)]
            self._queue.clear()
            self._queued_images = 0
            self._cond.notify_all()
        _settle(outcomes)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()

    # --- admission (under the lock) ---------------------------------------------------------

    def _admit(self, request: _Request, now: float) -> None:
        """Raise what refuses `request` now, if anything does (server/admission.py decides, from
        this batcher's quote)."""
        n, max_batch = request.queued, self.policy.max_batch
        running_usual = self._running_left(now, best=False)
        running_best = self._running_left(now, best=True)
        self._admit_queue(QueueQuote(
            self.name, n, self._queued_images, self.policy.max_queue_images,
            usual_wait=running_usual + self.costs.expected(self._queued_images, max_batch),
            best_time=running_best + self.costs.optimistic(self._queued_images + n, max_batch),
            running_left=running_best, closed=self._closed), request.deadline, now)

    def _fits_alone(self, request: _Request, now: float) -> bool:
        """Whether `request` would be admitted with nothing queued ahead of it."""
        if request.queued > self.policy.max_queue_images:
            return False
        alone = self.costs.optimistic(request.queued, self.policy.max_batch)
        return request.deadline is None or (
            request.deadline - now > self._running_left(now, best=True) + alone)

    def _running_left(self, now: float, best: bool) -> float:
        """Seconds the running batch has left: its best (or usual) time less what it has run."""
        if not self._running_images:
            return 0.0
        estimate = self.costs.optimistic if best else self.costs.expected
        return max(0.0, self._running_since + estimate(self._running_images, self.policy.max_batch)
                   - now)

    def _enqueue(self, request: _Request) -> None:
        n = request.queued
        self._queue.append(_Piece(request, 0, n))  # _take cuts it at batch boundaries
        self._queued_images += n
        if request.deadline is not None:
            self._earliest_deadline = min(self._earliest_deadline, request.deadline)
        if self._running_images:
            self._arrived_while_running += n
        if self._waiting_for and self._queued_images >= self._waiting_for:
            self._cond.notify()

    def _drop_expired(self, now: float) -> list[Outcome]:
        """Take out of the queue every request that can no longer make its deadline even if it
        ran alone now; returns their outcomes (DeadlineExceeded)."""
        longest = self.costs.optimistic(self.policy.max_queue_images, self.policy.max_batch)
        if self._earliest_deadline - now > longest:
            return []  # none is that close to its deadline
        kept: collections.deque[_Piece] = collections.deque()
        dropped: list[Outcome] = []
        self._earliest_deadline = math.inf
        for piece in self._queue:
            request = piece.request
            error = None if request.done else self._expired(request, now, piece.size)
            if error is not None and self._finish(request):
                dropped.append((request, error))
            elif not request.done:
                kept.append(piece)
                if request.deadline is not None:
                    self._earliest_deadline = min(self._earliest_deadline, request.deadline)
        self._queue = kept
        return dropped

    def _cancel(self, request: _Request) -> None:
        with self._cond:
            request.cancelled = True
            self._queued_images -= request.queued
            request.queued = 0

    def _finish(self, request: _Request) -> bool:
        """Mark `request` decided and out of the queue's count; False if it already was."""
        if request.done:
            return False
        request.done = True
        self._queued_images -= request.queued
        request.queued = 0
        return True

    def _expired(self, request: _Request, now: float, batch: int) -> DeadlineExceeded | None:
        """The error for a request that cannot finish before its deadline in a batch of `batch`."""
        return expired(self.name, request.deadline, now,
                       self.costs.optimistic(batch, self.policy.max_batch), now - request.enqueued)

    # --- the batching thread ----------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            taken = self._next_batch()
            if taken is None:
                return
            pieces, dropped = taken
            _settle(dropped)
            if pieces:
                self._run(pieces)

    def _next_batch(self) -> tuple[list[_Piece], list[Outcome]] | None:
        """Wait for work, then take up to max_batch images of it; None once closed."""
        with self._cond:
            while not self._queued_images and not self._closed:
                self._wait_for(1, None)
            if self._closed:
                return None
            expected = min(self.policy.max_batch, self._expected_images)
            if self._queued_images < expected:  # the rest of a batch like the last is on its way
                run_by = max(self._queue[0].request.enqueued,
                             self._free_since) + self.policy.max_delay
                while self._queued_images < expected and not self._closed:
                    left = run_by - time.monotonic()
                    if left <= 0 or not self._wait_for(expected, left):
                        break
                if self._closed:
                    return None
            taken = self._take(self.policy.max_batch)
            self._running_images = sum(piece.size for piece in taken[0])
            self._running_since = time.monotonic()
            self._arrived_while_running = 0
        return taken

    def _wait_for(self, images: int, timeout: float | None) -> bool:
        """Under the lock: sleep until `images` are queued (submit notifies then) or `timeout`."""
        self._waiting_for = images
        try:
            return self._cond.wait(timeout)
        finally:
            self._waiting_for = 0

    def _take(self, max_batch: int) -> tuple[list[_Piece], list[Outcome]]:
        """Pop pieces until the batch is full, cutting the last one if it does not fit; drop
        requests that were cancelled or cannot finish before their deadline. Under the lock."""
        pieces: list[_Piece] = []
        dropped: list[Outcome] = []
        size = 0
        now = time.monotonic()
        while self._queue and size < max_batch:
            piece = self._queue[0]
            request = piece.request
            error = None if request.done else self._unwanted(request, now,
                                                             max(size + piece.size, 1))
            if request.done or error is not None:
                self._queue.popleft()
                if error is not None and self._finish(request):
                    dropped.append((request, error))
                continue
            room = max_batch - size
            if piece.size > room:  # cut: the rest stays at the head of the queue
                pieces.append(_Piece(request, piece.start, piece.start + room))
                piece.start += room
                taken = room
            else:
                self._queue.popleft()
                pieces.append(piece)
                taken = piece.size
            request.queued -= taken
            self._queued_images -= taken
            size += taken
        return pieces, dropped

    def _unwanted(self, request: _Request, now: float, batch: int) -> BaseException | None:
        """Why `request` must not run (it was cancelled, or cannot make its deadline), or None."""
        future = request.future
        if request.cancelled or future.cancelled() or (
                request.loop is None and not future.running()
                and not future.set_running_or_notify_cancel()):
            return Cancelled(f"the caller cancelled while queued for {self.name}")
        return self._expired(request, now, batch)

    def _run(self, pieces: list[_Piece]) -> None:
        images = _batch_images(pieces)
        n = len(images)
        if self.pad:
            size = next(s for s in self._shapes if s >= n)
            if size > n:
                images = np.concatenate([images, np.zeros((size - n, 1, SIDE, SIDE), np.uint8)])
        now = time.monotonic()
        waits = tuple(now - p.request.enqueued for p in pieces)
        started_ns = time.time_ns()
        started = time.perf_counter()
        try:
            out = self.runner.run(images)
            error = None
        except Exception as e:  # noqa: BLE001 - every request in the batch gets the error
            out, error = None, e
        seconds = time.perf_counter() - started
        if error is None and not out.probabilities.shape == out.logits.shape == (
                len(images), NUM_CLASSES):
            error = RuntimeError(f"{self.name} returned probabilities of shape "
                                 f"{out.probabilities.shape} and logits of shape "
                                 f"{out.logits.shape} for {len(images)} images")
        with self._cond:
            self._running_images = 0
            self._expected_images = n + self._arrived_while_running
            self._free_since = time.monotonic()
            if error is None:
                self.costs.observe(len(images), seconds)
            outcomes = (self._deliver(pieces, out) if error is None else
                        [(p.request, error) for p in pieces if self._finish(p.request)])
        self._record(BatchEvent(n, waits, seconds, error is None,
                                tuple(p.request.tag for p in pieces), started_ns, len(images),
                                self.runner.provider,
                                "" if error is None else f"{type(error).__name__}: {error}"))
        _settle(outcomes)

    def _record(self, event: BatchEvent) -> None:
        self.stats.add(event)
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - a broken listener must not stop the batcher
                log.exception("batch listener failed for %s", self.name)

    def _deliver(self, pieces: list[_Piece], out: RunOutput) -> list[Outcome]:
        """Each piece's rows of `out` to its request; the outcomes of requests now complete.
        Under the lock (a request may be dropped from the queue meanwhile)."""
        outcomes: list[Outcome] = []
        row = 0
        for piece in pieces:
            request, rows = piece.request, slice(row, row + piece.size)
            row += piece.size
            if request.done:
                continue
            if piece.size == len(request.images):  # all of it in this batch: views, no copies
                request.done = True
                outcomes.append((request, RunOutput(out.probabilities[rows], out.logits[rows])))
                continue
            if request.probabilities is None:
                n = len(request.images)
                request.probabilities = np.empty((n, out.probabilities.shape[1]), np.float32)
                request.logits = np.empty((n, out.logits.shape[1]), np.float32)
            request.probabilities[piece.start:piece.stop] = out.probabilities[rows]
            request.logits[piece.start:piece.stop] = out.logits[rows]
            request.left -= piece.size
            if request.left == 0 and self._finish(request):
                outcomes.append((request, RunOutput(request.probabilities, request.logits)))
        return outcomes


def _batch_images(pieces: list[_Piece]) -> np.ndarray:
    """The pieces' images as one contiguous batch (a view when there is one piece)."""
    if len(pieces) == 1:
        piece = pieces[0]
        return piece.request.images[piece.start:piece.stop]
    return np.concatenate([p.request.images[p.start:p.stop] for p in pieces])


def _settle(outcomes: list[Outcome]) -> None:
    """Give each request its outcome: a thread's Future at once; the futures of each event loop
    in one call_soon_threadsafe (one wake-up of that loop for the whole batch)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for request, outcome in outcomes:
        if request.loop is None:
            _set(request.future, outcome)
        else:
            by_loop.setdefault(request.loop, []).append((request, outcome))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_set_all, items)
        except RuntimeError:  # the loop is closed: nobody waits for these any more
            pass


def _set_all(items: list[Outcome]) -> None:
    for request, outcome in items:
        _set(request.future, outcome)


def _set(future: AnyFuture, outcome: RunOutput | BaseException) -> None:
    """Set a future that nobody cancelled (a thread's Future must be marked running first)."""
    if future.done():
        return
    if isinstance(future, Future) and not (future.running()
                                           or future.set_running_or_notify_cancel()):
        return  # cancelled while pending: nobody waits for it
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
