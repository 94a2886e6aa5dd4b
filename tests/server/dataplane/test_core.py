"""server/dataplane/core.py without gRPC: validation, limits, batching, deadlines and cancellation, with
fake runners (they make slowness and batch sizes visible; real models are in test_batcher.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from harness.wait import until_async
from server.batching.batcher import BatchPolicy
from server.dataplane.core import Core
from server.dataplane.types import Batching, ImageData, Limits
from server.errors import (DeadlineExceeded, InvalidImage, InvalidRequest, ModelNotFound,
                           Overloaded, Unavailable)
from tests.server.fakes import fake_model


def raw(value: int = 0) -> ImageData:
    return ImageData("raw", bytes([value]) * 784)


def make_core(*models, limits=Limits(max_images_per_request=4), **batching) -> Core:
    core = Core(list(models), limits, Batching(BatchPolicy(**batching)) if batching else Batching())
    core.start()
    return core


def classify(core, *args, **kw):
    return asyncio.run(core.classify(*args, **kw))


@pytest.fixture
def core():
    core = make_core(fake_model("a", 1), fake_model("a", 3), fake_model("b", 2))
    yield core
    core.close()


def queued_images(core: Core, model: str, version: int) -> int:
    """The images waiting in one version's batch queue, as the core reports them."""
    return dict(((m.name, m.version), n) for m, n in core.queues())[(model, version)]


def test_classify_returns_top_k_in_order(core):
    result = classify(core, "a", 0, [raw(3), raw(7)], top_k=3)
    assert (result.model, result.version) == ("a", 3)  # version 0: the newest loaded
    first = result.classifications[0]
    assert [p.class_id for p in first[:1]] == [3] and len(first) == 3
    assert first[0].label == "Dress" and first[0].probability == pytest.approx(0.91)
    assert result.classifications[1][0].class_id == 7


def test_tied_probabilities_are_ranked_by_class_id(core):
    """The fake gives 0.91 to one class and 0.01 to the nine others: the whole top 10 is fixed."""
    (ranked,) = classify(core, "a", 0, [raw(4)], top_k=10).classifications
    assert [p.class_id for p in ranked] == [4, 0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert [p.probability for p in ranked[1:]] == pytest.approx([0.01] * 9)


def test_top_k_zero_means_one_and_over_ten_is_refused(core):
    assert len(classify(core, "a", 0, [raw()], top_k=0).classifications[0]) == 1
    assert len(classify(core, "a", 0, [raw()], top_k=10).classifications[0]) == 10
    with pytest.raises(InvalidRequest, match="top_k must be 0..10"):
        classify(core, "a", 0, [raw()], top_k=11)


def test_model_and_version_lookup(core):
    assert classify(core, "a", 1, [raw()]).version == 1
    served = r"'zzz' is not served; served models: a \(versions 1, 3\), b"
    with pytest.raises(ModelNotFound, match=served):
        classify(core, "zzz", 0, [raw()])
    with pytest.raises(ModelNotFound, match="version 2 is not served"):
        classify(core, "a", 2, [raw()])
    with pytest.raises(InvalidRequest, match="model is required"):
        classify(core, "", 0, [raw()])


def test_image_count_limits(core):
    with pytest.raises(InvalidRequest, match="no images"):
        classify(core, "a", 0, [])
    with pytest.raises(InvalidRequest, match="5 images is over the limit of 4"):
        classify(core, "a", 0, [raw()] * 5)


def test_bad_image_names_its_index_and_nothing_runs():
    model = fake_model("a")
    core = make_core(model, limits=Limits())
    with pytest.raises(InvalidImage, match=r"^image 2: a raw image must be exactly 784 bytes") as e:
        classify(core, "a", 0, [raw(), raw(), ImageData("raw", b"\0" * 10)])
    assert e.value.index == 2 and model.runner.runs == 0
    with pytest.raises(InvalidImage, match="image 0: no image data"):
        classify(core, "a", 0, [ImageData("", b"")])
    with pytest.raises(InvalidRequest, match="inversion must be one of"):
        classify(core, "a", 0, [raw()], inversion="upside-down")
    core.close()


def test_requests_beyond_max_in_flight_are_refused():
    model = fake_model("slow", gate=threading.Event())
    core = make_core(model, limits=Limits(max_in_flight=1))

    async def scenario():
        first = asyncio.create_task(core.classify("slow", 0, [raw()]))
        await until_async(model.runner.started.is_set, 10, "the first run started")
        with pytest.raises(Overloaded, match="limit of 1 requests in flight"):
            await core.classify("slow", 0, [raw()])
        model.runner.gate.set()
        await first
        assert core.in_flight == 0
        await core.classify("slow", 0, [raw()])  # the slot is free again

    asyncio.run(scenario())
    core.close()


def test_draining_refuses_new_requests(core):
    core.drain()
    with pytest.raises(Unavailable, match="shutting down"):
        classify(core, "a", 0, [raw()])


def test_concurrent_requests_run_as_one_batch_and_get_their_own_rows():
    model = fake_model("slow", gate=threading.Event())
    core = make_core(model, limits=Limits(), max_batch=32, max_delay=0.01)

    async def scenario():
        first = asyncio.create_task(core.classify("slow", 0, [raw(1)]))
        # the first runs alone; the rest queue
        await until_async(model.runner.started.is_set, 10, "the first run started")
        rest = [asyncio.create_task(core.classify("slow", 0, [raw(v), raw(v + 1)]))
                for v in range(2, 8)]
        await until_async(lambda: queued_images(core, "slow", 1) == 12, 10, "12 image(s) queued")
        model.runner.gate.set()
        results = await asyncio.gather(first, *rest)
        return [[c[0].class_id for c in r.classifications] for r in results]

    assert asyncio.run(scenario()) == [[1]] + [[v, v + 1] for v in range(2, 8)]
    assert model.runner.sizes == [1, 12]
    core.close()


def test_a_request_larger_than_max_batch_is_split_and_reassembled_in_order():
    model = fake_model("a")
    core = make_core(model, limits=Limits(max_images_per_request=64), max_batch=8)
    result = classify(core, "a", 0, [raw(v) for v in range(20)])
    assert [c[0].class_id for c in result.classifications] == [v % 10 for v in range(20)]
    assert model.runner.sizes == [8, 8, 4]
    core.close()


def test_a_lone_caller_does_not_wait_for_the_queue_delay():
    """With a 5 s delay, each of three calls in a row would wait 5 s in the queue if a lone
    caller waited for more images: the batches' own account of each wait says it did not."""
    core = make_core(fake_model("a"), max_delay=5.0)
    waits = []
    core.served.batch_observers.append(lambda model, version, event: waits.extend(event.queue_waits))
    for v in range(3):
        assert classify(core, "a", 0, [raw(v)]).classifications[0][0].class_id == v
    assert len(waits) == 3 and max(waits) < 5.0
    core.close()


def test_a_cancelled_request_leaves_the_queue_and_never_runs():
    model = fake_model("slow", gate=threading.Event())
    core = make_core(model)

    async def scenario():
        first = asyncio.create_task(core.classify("slow", 0, [raw(1)]))
        await until_async(model.runner.started.is_set, 10, "the first run started")
        doomed = asyncio.create_task(core.classify("slow", 0, [raw(2), raw(2), raw(2)]))
        await until_async(lambda: queued_images(core, "slow", 1) == 3, 10, "3 image(s) queued")
        doomed.cancel()
        last = asyncio.create_task(core.classify("slow", 0, [raw(3)]))
        await until_async(lambda: queued_images(core, "slow", 1) == 1, 10,
                          "1 image queued: the cancelled 3 left the count")
        model.runner.gate.set()
        await first
        assert (await last).classifications[0][0].class_id == 3
        with pytest.raises(asyncio.CancelledError):
            await doomed

    asyncio.run(scenario())
    assert model.runner.sizes == [1, 1]  # the cancelled request's three images never ran
    core.close()


def test_deadline_passed_or_too_short_is_refused_before_running():
    model = fake_model("a", delay=0.05)
    core = make_core(model)
    with pytest.raises(DeadlineExceeded):
        classify(core, "a", 0, [raw()], deadline=time.monotonic())
    assert model.runner.runs == 0
    classify(core, "a", 0, [raw()], deadline=time.monotonic() + 5.0)
    with pytest.raises(DeadlineExceeded, match="needs at least"):
        classify(core, "a", 0, [raw()], deadline=time.monotonic() + 0.001)
    assert model.runner.runs == 1
    core.close()


def test_small_requests_with_short_deadlines_still_run_after_big_batches():
    """Single images are priced at the batch-1 time, not at an average over the sizes run: after
    a few 64-image requests, a single image whose deadline is shorter than a 64-image run fits."""
    model = fake_model("a", delay=0.01, delay_per_image=0.004)  # batch 1: 14 ms; 32: 138 ms
    core = make_core(model, limits=Limits(), max_batch=32)
    for _ in range(3):
        classify(core, "a", 0, [raw()] * 64)
    for v in range(5):
        result = classify(core, "a", 0, [raw(v)], deadline=time.monotonic() + 0.1)
        assert result.classifications[0][0].class_id == v
    core.close()


def test_a_batch_size_never_run_is_priced_by_the_sizes_around_it():
    """Warm-up runs batches of 1 and 32 only. Three images take about what one takes here
    (0.2 s), not three times that: with 0.45 s left they run rather than being refused."""
    model = fake_model("a", delay=0.2, delay_per_image=0.001)
    core = make_core(model, limits=Limits(), max_batch=32)
    result = classify(core, "a", 0, [raw(v) for v in (1, 2, 3)], deadline=time.monotonic() + 0.45)
    assert [c[0].class_id for c in result.classifications] == [1, 2, 3]
    assert model.runner.sizes == [3]
    core.close()


def test_a_request_whose_deadline_passes_while_queued_never_runs():
    model = fake_model("slow", delay=0.1)
    core = make_core(model, max_delay=0.0)
    model.runner.delay = 0.6  # slower than the warm-up taught the cost model: admission says yes

    async def scenario():
        first = asyncio.create_task(core.classify("slow", 0, [raw(1)]))
        await until_async(model.runner.started.is_set, 10, "the first run started")
        late = asyncio.create_task(core.classify("slow", 0, [raw(3)],
                                                 deadline=time.monotonic() + 0.4))
        await until_async(lambda: queued_images(core, "slow", 1) == 1, 10, "1 image admitted")
        await first
        with pytest.raises(DeadlineExceeded, match="passed while queued"):
            await late

    asyncio.run(scenario())
    assert model.runner.sizes == [1]
    core.close()


def test_a_full_queue_is_refused_with_a_retry_hint():
    model = fake_model("slow", gate=threading.Event())
    core = make_core(model, max_queue_images=4, max_batch=4)

    async def scenario():
        first = asyncio.create_task(core.classify("slow", 0, [raw()]))
        await until_async(model.runner.started.is_set, 10, "the first run started")
        queued = asyncio.create_task(core.classify("slow", 0, [raw()] * 3))
        await until_async(lambda: queued_images(core, "slow", 1) == 3, 10, "3 image(s) queued")
        with pytest.raises(Overloaded, match="queue is full") as e:
            await core.classify("slow", 0, [raw()] * 2)
        assert e.value.retry_after > 0
        one_more = asyncio.create_task(core.classify("slow", 0, [raw()]))  # still fits
        await until_async(lambda: queued_images(core, "slow", 1) == 4, 10, "4 image(s) queued")
        model.runner.gate.set()
        await asyncio.gather(first, queued, one_more)

    asyncio.run(scenario())
    core.close()


def test_list_models_reports_each_loaded_version():
    core = make_core(fake_model("a", 1, provider="CUDAExecutionProvider", accuracy=0.9))
    (view,) = core.list_models()
    assert (view.name, view.version, view.provider, view.test_accuracy) == (
        "a", 1, "CUDAExecutionProvider", 0.9)
    assert len(view.labels) == 10 and view.input_side == 28
    core.close()


def test_cuda_batches_are_padded_to_warmed_buckets():
    """A mock CUDA provider (no GPU here): the batcher warms 1, 2, 4, 8 and pads every batch to
    one of them, so no request ever brings a new shape to cuDNN."""
    model = fake_model("g", provider="CUDAExecutionProvider")
    core = make_core(model, limits=Limits(max_images_per_request=16), max_batch=8)
    assert model.runner.warmups == 2 * 4  # each bucket twice: once to warm, once timed
    result = classify(core, "g", 0, [raw(v) for v in range(11)])
    assert [c[0].class_id for c in result.classifications] == [v % 10 for v in range(11)]
    assert model.runner.sizes == [8, 4]  # 8 + 3 padded to 4
    core.close()


def test_close_closes_every_runner():
    models = [fake_model("a", 1), fake_model("a", 3), fake_model("b", 2)]
    core = make_core(*models)
    core.close()
    assert all(m.runner.closed for m in models)


def test_result_probabilities_are_python_floats(core):
    p = classify(core, "b", 0, [raw()]).classifications[0][0]
    assert isinstance(p.probability, float) and not isinstance(p.probability, np.floating)


def test_decoding_runs_off_the_event_loop(core):
    """An encoded image is decoded on a decode thread, never on the loop's own thread."""
    import server.dataplane.imagefile as decode_module
    threads = []
    real = decode_module.decode_opened

    def spy(*args, **kw):
        threads.append(threading.current_thread().name)
        return real(*args, **kw)

    from tests.serving_fixtures import SAMPLES
    decode_module.decode_opened = spy
    try:
        classify(core, "a", 0, [ImageData("encoded", (SAMPLES / "bag.png").read_bytes())])
    finally:
        decode_module.decode_opened = real
    assert threads and threads[0].startswith("decode")


def test_batch_statistics_and_listeners_see_every_batch():
    model = fake_model("a")
    core = make_core(model, limits=Limits(max_images_per_request=64), max_batch=8)
    events = []
    core.served.batch_observers.append(lambda model, version, event: events.append(
        (model, version, event)))
    classify(core, "a", 0, [raw(v) for v in range(20)])
    classify(core, "a", 0, [raw(1)])
    assert {(m, v) for m, v, _ in events} == {("a", 1)}
    events = [e for _, _, e in events]
    assert [e.size for e in events] == [8, 8, 4, 1] and all(e.ok for e in events)
    (stats,) = core.statistics("a", 1)
    assert (stats.execution_count, stats.inference_count) == (4, 21)
    assert {b.size: b.count for b in stats.by_size} == {8: 2, 4: 1, 1: 1}
    assert stats.queue_ns >= 0 and stats.compute_ns >= 0 and stats.last_inference_ms > 0
    core.close()


def test_removing_a_version_lets_the_requests_that_chose_it_finish():
    model = fake_model("slow", gate=threading.Event())
    core = make_core(model)

    async def scenario():
        running = asyncio.create_task(core.classify("slow", 0, [raw(1)]))
        await until_async(model.runner.started.is_set, 10, "the first run started")
        queued = asyncio.create_task(core.classify("slow", 0, [raw(2)]))
        await until_async(lambda: queued_images(core, "slow", 1) == 1, 10, "1 image(s) queued")
        removing = asyncio.create_task(asyncio.to_thread(core.served.remove, "slow", 1))
        await until_async(lambda: core.served.versions("slow") == [], 10,
                          "the version being removed no longer routed")
        with pytest.raises(ModelNotFound):
            await core.classify("slow", 0, [raw(3)])
        assert not removing.done()  # it waits for the two that chose the version
        model.runner.gate.set()
        results = await asyncio.gather(running, queued)  # ... and they finish
        await removing
        return [r.classifications[0][0].class_id for r in results]

    assert asyncio.run(scenario()) == [1, 2]
    assert model.runner.closed
    core.close()


def test_the_batch_waits_for_callers_whose_answers_were_in_the_previous_batch():
    """Closed-loop callers split in two halves would take turns (each half arriving while the
    other runs); the batcher expects the last batch plus what arrived meanwhile, and waits the
    (bounded) moment it takes the first half to come back."""
    model = fake_model("slow", gate=threading.Event())
    core = make_core(model, max_batch=32, max_delay=1.0)

    async def scenario():
        first = asyncio.create_task(core.classify("slow", 0, [raw(1)]))
        await until_async(model.runner.started.is_set, 10, "the first run started")
        meanwhile = [asyncio.create_task(core.classify("slow", 0, [raw(v)])) for v in (2, 3, 4)]
        await until_async(lambda: queued_images(core, "slow", 1) == 3, 10, "3 image(s) queued")
        model.runner.gate.set()
        await first  # the first caller comes back ...
        again = asyncio.create_task(core.classify("slow", 0, [raw(5)]))
        await asyncio.gather(again, *meanwhile)

    asyncio.run(scenario())
    assert model.runner.sizes == [1, 4]  # ... and rides with the three that queued meanwhile
    core.close()
