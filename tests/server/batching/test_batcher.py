"""The batcher on real exported models: batched results equal unbatched ones, whatever the mix.
Then each of its rules (admission, pricing, cutting, waiting, padding, closing), through its public
API, on fake runners whose runs wait for the test to open their gate (tests/server/fakes.py) and
cost models that know exact prices: every rule's test goes red when that rule is switched off."""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest

from harness.wait import until
from server.batching.batcher import Batcher, BatchPolicy, buckets
from server.batching.cost_model import CostModel
from server.errors import DeadlineExceeded, Overloaded, Unavailable
from server.models.providers import CUDA
from server.models.runner import OnnxRunner
from tests.server.conftest import models_dir  # noqa: F401 - fixture
from tests.server.fakes import FakeRunner


@pytest.fixture(scope="module")
def runner(models_dir):  # noqa: F811
    runner = OnnxRunner(models_dir / "lenet_bn" / "1" / "model.onnx", ["CPUExecutionProvider"])
    yield runner
    runner.close()


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize("sizes,max_batch", [
    ([1] * 12, 4),                 # singles coalesce
    ([3, 40, 7, 1, 16, 2], 8),     # splits, cuts at batch edges, odd sizes
    ([32, 32, 5], 32),             # full batches
    ([1, 2, 3, 4, 5, 6, 7], 5),    # every piece cut somewhere
])
def test_batched_results_equal_direct_runs(runner, sizes, max_batch):
    batcher = Batcher(runner, BatchPolicy(max_batch=max_batch, max_delay=0.005), "lenet_bn")
    batcher.start()
    requests = [images(n, seed) for seed, n in enumerate(sizes)]
    tickets: list = [None] * len(requests)
    go = threading.Event()

    def submit(i: int) -> None:
        go.wait()
        tickets[i] = batcher.submit(requests[i])

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    go.set()  # all at once, so they share batches
    for t in threads:
        t.join()
    try:
        for batch, ticket in zip(requests, tickets):
            got = ticket.future.result(timeout=60)
            want = runner.run(batch)
            assert got.probabilities.shape == (len(batch), 10)
            np.testing.assert_array_equal(got.probabilities.argmax(1), want.probabilities.argmax(1))
            np.testing.assert_allclose(got.probabilities, want.probabilities, rtol=0, atol=1e-5)
            np.testing.assert_allclose(got.logits, want.logits, rtol=0, atol=1e-4)
    finally:
        batcher.close()


def test_buckets_cover_every_size_up_to_max_batch():
    assert buckets(1) == [1]
    assert buckets(32) == [1, 2, 4, 8, 16, 32]
    assert buckets(24) == [1, 2, 4, 8, 16, 24]


def test_cost_model_by_batch_size():
    costs = CostModel()
    assert costs.optimistic(10, 32) == 0.0  # nothing learned yet: refuse nothing
    costs.observe(1, 0.010)   # 10 ms per image alone
    costs.observe(32, 0.160)  # 5 ms per image in a full batch
    assert costs.optimistic(1, 32) == pytest.approx(0.010)
    assert costs.optimistic(64, 32) == pytest.approx(0.320)
    assert costs.optimistic(33, 32) == pytest.approx(0.170)  # a full batch, then one alone
    costs.observe(32, 0.320)  # a slow run: the average moves, the best does not
    assert costs.optimistic(32, 32) == pytest.approx(0.160)
    assert costs.expected(32, 32) > costs.optimistic(32, 32)
    # A size never seen: at least what the largest size seen below it takes (a batch does not
    # run faster for holding more), not 3 x the batch-1 cost; usually, between its neighbours.
    assert costs.optimistic(3, 32) == pytest.approx(0.010)
    assert 0.010 < costs.expected(3, 32) < costs.expected(32, 32)
    costs.observe(3, 0.012)  # once seen, its own figures
    assert costs.optimistic(3, 32) == pytest.approx(0.012)
    assert costs.optimistic(4, 32) == pytest.approx(0.012)


# --- the rules, on gated fake runners -----------------------------------------------------------

@pytest.fixture
def gated():
    """make(prices, **policy): a started batcher (max_delay 0 unless given) on a FakeRunner whose
    runs wait for `runner.gate`, and whose cost model knows exactly `prices` (batch size -> the
    seconds of each run seen), not the fake's warm-ups. Gates opened and batchers closed after."""
    made: list[tuple[FakeRunner, Batcher]] = []

    def make(prices: dict[int, list[float]], provider: str = "CPUExecutionProvider",
             **policy) -> tuple[FakeRunner, Batcher]:
        runner = FakeRunner(provider=provider, gate=threading.Event())
        batcher = Batcher(runner, BatchPolicy(**{"max_delay": 0.0, **policy}), "gated")
        batcher.start()
        batcher.costs = CostModel()
        for size, runs in prices.items():
            for seconds in runs:
                batcher.costs.observe(size, seconds)
        made.append((runner, batcher))
        return runner, batcher

    yield make
    for runner, batcher in made:
        runner.gate.set()
        batcher.close()


def numbered(*values: int) -> np.ndarray:
    """One image per value, every pixel that value: FakeRunner answers class value % 10."""
    return np.stack([np.full((1, 28, 28), v, np.uint8) for v in values])


def classes(ticket) -> list[int]:
    out = ticket.future.result(10)
    assert out.logits.argmax(1).tolist() == out.probabilities.argmax(1).tolist()
    return out.probabilities.argmax(1).tolist()


def running(runner: FakeRunner, batcher: Batcher, n: int = 1) -> float:
    """Submit `n` images and wait until their batch is running (held at the gate); returns a
    time.monotonic() taken before the submit, so at most the running batch's start."""
    before = time.monotonic()
    batcher.submit(images(n, 100))
    assert runner.started.wait(10), "the first batch never started"
    return before


# Admission: the queue's limit --------------------------------------------------------------------

def test_a_full_queue_refuses_at_submit_with_a_retry_hint_priced_by_the_usual_times(gated):
    """The hint is what the running batch usually has left plus the usual time of the images
    queued ahead (moving averages, not the best times deadlines are priced with)."""
    runner, batcher = gated({1: [1.0, 6.0], 4: [2.0, 7.0]}, max_batch=4, max_queue_images=4)
    costs = batcher.costs
    usual = costs.expected(1, 4) + costs.expected(3, 4)
    assert usual - (costs.optimistic(1, 4) + costs.optimistic(3, 4)) > 1.5  # tells them apart
    before = running(runner, batcher)
    batcher.submit(images(3, 1))
    with pytest.raises(Overloaded, match=r"gated's queue is full \(3 of 4 images waiting\); "
                                         r"retry in about \d+ ms") as refused:
        batcher.submit(images(2, 2))  # 3 + 2 > 4
    elapsed = time.monotonic() - before  # at least what the running batch has run
    hint = refused.value.retry_after
    assert usual - elapsed <= hint <= usual + 1e-9
    assert f"retry in about {hint * 1000:.0f} ms" in str(refused.value)
    assert refused.value.code == "RESOURCE_EXHAUSTED"
    assert batcher.queued_images == 3  # nothing of the refused request was queued
    last = batcher.submit(images(1, 3))  # 3 + 1 fits
    runner.gate.set()
    assert last.future.result(10).probabilities.shape == (1, 10)
    assert runner.sizes == [1, 4]


# Admission: deadlines ----------------------------------------------------------------------------

def test_a_deadline_too_short_is_refused_by_submit_itself_before_anything_runs(gated):
    """Refused synchronously, with the submission's own message, not queued and later failed by
    the batcher's sweep (whose message also says "needs at least")."""
    runner, batcher = gated({1: [1.0]}, max_batch=4)
    with pytest.raises(DeadlineExceeded, match=r"^the deadline leaves [\d.]+ ms, and gated needs "
                       r"at least 1000\.0 ms for these 1 image\(s\) after the 0 queued ahead of "
                       r"them \(and 0\.0 ms left of the running batch\)$"):
        batcher.submit(images(1, 0), deadline=time.monotonic() + 0.5)
    assert batcher.queued_images == 0 and batcher.stats.batches == 0 and runner.sizes == []
    in_time = batcher.submit(images(1, 1), deadline=time.monotonic() + 30)  # 1 s fits in 30
    runner.gate.set()
    assert in_time.future.result(10).probabilities.shape == (1, 10)
    assert runner.sizes == [1]


def test_the_images_queued_ahead_are_priced_in_full_batches_before_the_requests_own(gated):
    """Ahead of one more image: the running batch (10 s at best) and 8 queued images, two full
    batches of 4 (20 s each at best), then a batch with the new image (10 s): 60 s at least."""
    runner, batcher = gated({1: [10.0], 4: [20.0]}, max_batch=4, max_queue_images=16)
    running(runner, batcher)
    batcher.submit(images(8, 1))
    with pytest.raises(DeadlineExceeded, match="after the 8 queued ahead of them"):
        batcher.submit(images(1, 2), deadline=time.monotonic() + 55)
    assert batcher.queued_images == 8
    batcher.submit(images(1, 3), deadline=time.monotonic() + 120)
    assert batcher.queued_images == 9


def test_the_running_batch_is_priced_by_its_best_time(gated):
    """A batch of 8 is running: 100 s at best, 300 s usually. A deadline of 50 s is refused (even
    the best time of what runs first exceeds it); one of 200 s is admitted (the usual time would
    refuse it, and so would a model that counted the running batch twice)."""
    runner, batcher = gated({8: [100.0, 1100.0], 1: [0.1]}, max_batch=8)
    assert batcher.costs.expected(8, 8) == pytest.approx(300.0)
    before = running(runner, batcher, 8)
    with pytest.raises(DeadlineExceeded, match=r"\(and ([\d.]+) ms left of the running batch\)"
                       ) as refused:
        batcher.submit(images(1, 1), deadline=time.monotonic() + 50)
    elapsed = time.monotonic() - before
    left = float(re.search(r"and ([\d.]+) ms left", str(refused.value)).group(1)) / 1000
    assert 100.0 - elapsed - 0.001 <= left <= 100.0
    admitted = batcher.submit(images(1, 2), deadline=time.monotonic() + 200)
    runner.gate.set()
    assert admitted.future.result(10).probabilities.shape == (1, 10)
    assert runner.sizes == [8, 1]


def test_the_part_of_the_running_batch_already_run_is_not_counted_ahead(gated):
    """A batch of 8 priced at 0.4 s that has run for 0.4 s has nothing left by the model's count:
    a single image (0.05 s) with 0.4 s to go fits, though not after the whole running batch."""
    runner, batcher = gated({8: [0.4], 1: [0.05]}, max_batch=8)
    started = running(runner, batcher, 8)
    until(lambda: time.monotonic() > started + 0.4, 10, "0.4 s since the batch of 8 began")
    ticket = batcher.submit(images(1, 1), deadline=time.monotonic() + 0.4)
    runner.gate.set()
    assert ticket.future.result(10).probabilities.shape == (1, 10)
    assert runner.sizes == [8, 1]


# Admission: before refusing, drop what can no longer run ----------------------------------------

def test_a_full_queue_first_drops_the_requests_past_their_deadline_then_admits(gated):
    runner, batcher = gated({1: [0.001], 4: [0.001]}, max_batch=4, max_queue_images=4)
    running(runner, batcher)
    deadline = time.monotonic() + 0.2
    expired = batcher.submit(images(3, 1), deadline=deadline)
    until(lambda: time.monotonic() > deadline, 10, "the queued request's deadline passed")
    late = batcher.submit(images(2, 2))  # 3 + 2 would be over 4, but the 3 cannot run any more
    # Failed by that submit (the batcher thread is held at the gate: it dropped nothing).
    assert expired.future.done()
    with pytest.raises(DeadlineExceeded, match="the deadline passed while queued for gated"):
        expired.future.result(0)
    assert batcher.queued_images == 2
    runner.gate.set()
    assert late.future.result(10).probabilities.shape == (2, 10)
    assert runner.sizes == [1, 2]


def test_a_deadline_refusal_first_drops_the_requests_past_their_deadline_then_admits(gated):
    """4 images queued ahead (0.25 s at best) would make a 0.2 s deadline impossible, but their
    own deadline has passed: they are dropped, and the request fits alone (1 ms)."""
    runner, batcher = gated({1: [0.001], 4: [0.25]}, max_batch=4, max_queue_images=16)
    running(runner, batcher)
    deadline = time.monotonic() + 0.6
    expired = batcher.submit(images(4, 1), deadline=deadline)
    until(lambda: time.monotonic() > deadline, 10, "the queued request's deadline passed")
    hurried = batcher.submit(images(1, 2), deadline=time.monotonic() + 0.2)
    assert expired.future.done() and batcher.queued_images == 1
    with pytest.raises(DeadlineExceeded, match="passed while queued"):
        expired.future.result(0)
    runner.gate.set()
    assert hurried.future.result(10).probabilities.shape == (1, 10)
    assert runner.sizes == [1, 1]


@pytest.mark.parametrize("too_big", [True, False], ids=["over-the-queue", "own-deadline-passed"])
def test_a_request_that_would_not_fit_even_alone_is_refused_without_a_sweep(gated, too_big):
    """Dropping expired requests cannot help a request larger than the queue, or one whose own
    deadline is too short: it is refused as it stands, and the expired request stays queued
    until the batcher reaches it (and drops it then)."""
    runner, batcher = gated({1: [0.001], 4: [0.001]}, max_batch=4, max_queue_images=4)
    running(runner, batcher)
    deadline = time.monotonic() + 0.2
    expired = batcher.submit(images(3, 1), deadline=deadline)
    until(lambda: time.monotonic() > deadline, 10, "the queued request's deadline passed")
    with pytest.raises(Overloaded if too_big else DeadlineExceeded):
        if too_big:
            batcher.submit(images(5, 2))
        else:
            batcher.submit(images(1, 2), deadline=time.monotonic() - 1.0)
    assert not expired.future.done() and batcher.queued_images == 3
    runner.gate.set()
    with pytest.raises(DeadlineExceeded, match="passed while queued"):
        expired.future.result(10)
    assert runner.sizes == [1]


# Cancellation -----------------------------------------------------------------------------------

def test_a_cancelled_request_stops_counting_as_queued_at_once(gated):
    """Its images no longer count for the queue's limit nor ahead of the deadlines behind it,
    though it leaves the queue only when the batcher reaches it; they never run."""
    runner, batcher = gated({1: [0.001], 4: [10.0]}, max_batch=4, max_queue_images=4)
    running(runner, batcher)
    doomed = batcher.submit(images(3, 1))
    assert batcher.queued_images == 3
    doomed.cancel()
    assert batcher.queued_images == 0
    hurried = batcher.submit(images(1, 2), deadline=time.monotonic() + 5)  # not behind 3+1: 10 s
    rest = batcher.submit(images(3, 3))  # 1 + 3 fills the queue of 4, which 3 more would overflow
    runner.gate.set()
    assert hurried.future.result(10).probabilities.shape == (1, 10)
    assert rest.future.result(10).probabilities.shape == (3, 10)
    assert doomed.future.cancelled() and runner.sizes == [1, 4]


# Cutting requests at batch edges ----------------------------------------------------------------

def test_a_request_cut_across_batches_is_put_back_together_in_order(gated):
    """With batches of 4, a 3-image request and a 6-image one queued behind a running batch run
    as [3 + 1], [4], [1]: the second request's rows come from three batches, in its own order."""
    runner, batcher = gated({}, max_batch=4)
    running(runner, batcher)
    first = batcher.submit(numbered(0, 1, 2))
    second = batcher.submit(numbered(3, 4, 5, 6, 7, 8))
    runner.gate.set()
    assert classes(first) == [0, 1, 2]
    assert classes(second) == [3, 4, 5, 6, 7, 8]
    assert runner.sizes == [1, 4, 4, 1]


# When a batch runs --------------------------------------------------------------------------------

def test_after_a_batch_of_4_a_lone_image_waits_max_delay_for_the_other_3(gated):
    """The batcher expects a batch like the last one: the lone image waits `max_delay` past its
    arrival (the previous batch ended longer ago than that), as the batch's own account says."""
    runner, batcher = gated({}, max_batch=4, max_delay=0.3)
    runner.gate.set()
    waits = []
    batcher.listeners.append(lambda event: waits.append(event.queue_waits))
    batcher.submit(images(4, 0)).future.result(10)
    done = time.monotonic()  # after the batch of 4 ended
    until(lambda: time.monotonic() > done + 0.3, 10, "max_delay past the end of the batch of 4")
    batcher.submit(images(1, 1)).future.result(10)
    assert runner.sizes == [4, 1]
    assert waits[1][0] >= 0.3 - 0.002  # (a timed wait may end a clock tick early)


def test_a_waiting_batch_runs_as_soon_as_the_images_it_expects_are_there(gated):
    """A batch of 4 ran while 1 more image arrived: the next batch expects 4 (5, capped at
    max_batch), waits for them, and runs when 3 more come, not after max_delay (60 s)."""
    runner, batcher = gated({}, max_batch=4, max_delay=60.0)
    running(runner, batcher, 4)
    tickets = [batcher.submit(images(1, 1))]
    runner.gate.set()
    until(lambda: batcher.waiting_for == 4, 10, "the batcher waiting for a batch of 4")
    tickets.append(batcher.submit(images(3, 2)))
    assert [t.future.result(30).probabilities.shape for t in tickets] == [(1, 10), (3, 10)]
    assert runner.sizes == [4, 4]


def test_the_wait_runs_from_the_end_of_the_previous_batch_when_that_is_later(gated):
    """An image that arrived while a batch of 1 ran counts in the next batch's expected size (2:
    the load the batcher sees), and though it arrived longer than max_delay before that batch
    ended, it still waits max_delay after the end for the other (callers come back then)."""
    runner, batcher = gated({}, max_batch=4, max_delay=0.3)
    running(runner, batcher, 1)
    arrived = time.monotonic()
    lone = batcher.submit(images(1, 1))
    until(lambda: time.monotonic() > arrived + 0.3, 10, "max_delay past the image's arrival")
    opened = time.monotonic()  # the batch of 1 ends after this
    runner.gate.set()
    assert lone.future.result(10).probabilities.shape == (1, 10)
    assert runner.sizes == [1, 1]
    assert runner.began[1] >= opened + 0.3 - 0.002  # (a timed wait may end a clock tick early)


# Padding on CUDA ----------------------------------------------------------------------------------

@pytest.mark.parametrize("provider, warmed, ran", [
    (CUDA, [1, 1, 2, 2, 4, 4, 8, 8], [4]),          # 3 images padded to the bucket of 4
    ("CPUExecutionProvider", [1], [3]),  # shapes are free: no padding, batch 1 timed once
], ids=["cuda", "cpu"])
def test_on_cuda_batches_are_padded_to_the_warmed_bucket_sizes(provider, warmed, ran):
    """Every shape a CUDA batch can take was warmed (twice: to build, then timed); the padding
    rows are not part of anyone's answer nor of the batch's size."""
    runner = FakeRunner(provider=provider)  # a mock CUDA provider: nothing here needs a GPU
    batcher = Batcher(runner, BatchPolicy(max_batch=8, max_delay=0.0), "padded")
    batcher.start()
    try:
        assert runner.warmed == warmed
        assert classes(batcher.submit(numbered(1, 2, 3))) == [1, 2, 3]
        assert runner.sizes == ran
        assert batcher.stats.images == 3 and list(batcher.stats.by_size) == [3]
    finally:
        batcher.close()


# Closing ------------------------------------------------------------------------------------------

def test_close_fails_what_is_queued_unavailable_and_lets_the_running_batch_finish(gated):
    runner, batcher = gated({}, max_batch=4)
    first = batcher.submit(images(1, 0))
    assert runner.started.wait(10)
    queued = [batcher.submit(images(2, 1)), batcher.submit(images(3, 2))]
    closing = threading.Thread(target=batcher.close)
    closing.start()  # close() waits for the running batch: the gate is still shut
    for ticket in queued:
        error = ticket.future.exception(timeout=10)
        assert isinstance(error, Unavailable) and error.code == "UNAVAILABLE"
        assert str(error) == "gated shut down before this ran"
    assert batcher.queued_images == 0
    with pytest.raises(Unavailable, match="gated is shutting down; retry on another instance"):
        batcher.submit(images(1, 3))
    runner.gate.set()
    closing.join(10)
    assert not closing.is_alive()
    assert first.future.result(0).probabilities.shape == (1, 10)  # the running batch finished
    assert runner.sizes == [1]
