"""The batcher on real exported models: batched results equal unbatched ones, whatever the mix."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from server.batching.batcher import Batcher, BatchPolicy, buckets
from server.batching.cost_model import CostModel, bucket
from server.models.runner import OnnxRunner
from tests.server.conftest import models_dir  # noqa: F401 - fixture


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
    assert costs.optimistic(3, 32) == pytest.approx(3 * 0.010)  # size 4 unseen: nearest is 1
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 32, 33)] == [1, 2, 4, 4, 8, 32, 64]
