"""The batcher on real exported models: batched results equal unbatched ones, whatever the mix;
and its admission, with fake runners whose runs wait for the test (tests/server/fakes.py)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from server.batching.batcher import Batcher, BatchPolicy, buckets
from server.batching.cost_model import CostModel
from server.errors import DeadlineExceeded
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


# --- admission -----------------------------------------------------------------------------------

def gated(delay_per_image: float, **policy) -> tuple[FakeRunner, Batcher]:
    """A started batcher whose cost model learned `delay_per_image` seconds an image (warm-up),
    on a runner whose own runs then take no time but wait for its gate."""
    runner = FakeRunner(delay_per_image=delay_per_image, gate=threading.Event())
    batcher = Batcher(runner, BatchPolicy(max_delay=0.0, **policy), "gated")
    batcher.start()
    runner.delay_per_image = 0.0
    return runner, batcher


def until(moment: float) -> None:
    """Let the clock reach `moment` (time.monotonic()): the state waited for is the time itself,
    as the cost model counts it."""
    while (left := moment - time.monotonic()) > 0:
        threading.Event().wait(left)


def test_the_part_of_the_running_batch_already_run_is_not_counted_ahead():
    """A batch of 8 learned at 0.4 s that has run for 0.4 s has nothing left by the model's
    count: a single image with 0.3 s to go fits (0.05 s), though all 9 images would not."""
    runner, batcher = gated(0.05, max_batch=8)
    try:
        batcher.submit(images(8, 0))
        assert runner.started.wait(10)
        until(time.monotonic() + 0.4)
        ticket = batcher.submit(images(1, 1), deadline=time.monotonic() + 0.3)
        runner.gate.set()
        assert ticket.future.result(10).probabilities.shape == (1, 10)
        assert runner.sizes == [8, 1]
    finally:
        runner.gate.set()
        batcher.close()


def test_a_cancelled_request_frees_its_place_in_the_queue_at_once():
    """Its images no longer count as queued (for the queue's limit, the deadlines of the
    requests behind it, the queue gauge), though it leaves the queue only when the batcher
    reaches it."""
    runner, batcher = gated(0.0, max_batch=4, max_queue_images=4)
    try:
        batcher.submit(images(1, 0))
        assert runner.started.wait(10)
        doomed = batcher.submit(images(3, 1))
        assert batcher.queued_images == 3
        doomed.cancel()
        assert batcher.queued_images == 0
        full = batcher.submit(images(4, 2))  # 3 + 4 would be over the 4 the queue holds
        runner.gate.set()
        assert full.future.result(10).probabilities.shape == (4, 10)
        assert doomed.future.cancelled() and runner.sizes == [1, 4]
    finally:
        runner.gate.set()
        batcher.close()


def test_a_request_whose_deadline_passed_in_the_queue_frees_its_place():
    runner, batcher = gated(0.0, max_batch=4, max_queue_images=4)
    try:
        batcher.submit(images(1, 0))
        assert runner.started.wait(10)
        deadline = time.monotonic() + 0.05
        expired = batcher.submit(images(3, 1), deadline=deadline)
        until(deadline)
        late = batcher.submit(images(2, 2))  # 3 + 2 would be over 4, but the 3 cannot run
        with pytest.raises(DeadlineExceeded, match="passed while queued"):
            expired.future.result(10)
        assert batcher.queued_images == 2
        runner.gate.set()
        assert late.future.result(10).probabilities.shape == (2, 10)
        assert runner.sizes == [1, 2]
    finally:
        runner.gate.set()
        batcher.close()
