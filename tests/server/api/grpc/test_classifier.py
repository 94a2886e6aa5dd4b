"""The gRPC service end to end: a real server on a loopback port with real exported models."""

from __future__ import annotations

import gc
import json
import logging
import threading
import tracemalloc
from concurrent import futures

import grpc
import numpy as np
import pytest
from fmnist.v1 import classifier_pb2 as pb
from fmnist.v1 import classifier_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from harness.wait import until
from server.dataplane import imagefile
from server.app import create_server
from server.errors import StartupError
from server.dataplane.types import Limits
from server.models.runner import OnnxRunner
from tests.server.conftest import TEST_LIMITS
from tests.server.fakes import fake_model
from tests.server.images import encode, huge_png
from tests.serving_fixtures import SAMPLES

MODELS = ("lenet", "lenet_bn")


def sample(name: str = "ankle_boot.png") -> bytes:
    return (SAMPLES / name).read_bytes()


def pixels(name: str = "ankle_boot.png") -> np.ndarray:
    return np.asarray(Image.open(SAMPLES / name))


def request(*images: pb.Image, model: str = "lenet_bn", **kw) -> pb.ClassifyRequest:
    return pb.ClassifyRequest(model=model, images=list(images), **kw)


def enc(data: bytes) -> pb.Image:
    return pb.Image(encoded=data)


def raw(data: bytes) -> pb.Image:
    return pb.Image(raw=data)


def rpc_error(call, *args, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call(*args, timeout=30, **kw)
    return e.value


# --- Classify ------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
def test_encoded_and_raw_images_give_the_same_answer(stub, model):
    response = stub.Classify(request(enc(sample()), raw(pixels().tobytes()), model=model,
                                     top_k=10), timeout=30)
    assert (response.model, response.version) == (model, 1)
    a, b = response.classifications
    assert [p.class_id for p in a.predictions] == [p.class_id for p in b.predictions]
    np.testing.assert_allclose([p.probability for p in a.predictions],
                               [p.probability for p in b.predictions], rtol=1e-6)


def test_top_k_is_ordered_and_all_ten_sum_to_one(stub, samples):
    images = [enc(sample(name)) for name in samples]
    response = stub.Classify(request(*images, top_k=10), timeout=30)
    assert len(response.classifications) == len(samples)
    for c in response.classifications:
        probs = [p.probability for p in c.predictions]
        assert probs == sorted(probs, reverse=True)
        assert sorted(p.class_id for p in c.predictions) == list(range(10))
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        labels = json.loads(json.dumps([p.label for p in c.predictions]))
        assert "Ankle boot" in labels and "T-shirt/top" in labels
    top3 = stub.Classify(request(*images, top_k=3), timeout=30)
    for full, short in zip(response.classifications, top3.classifications):
        assert [p.class_id for p in short.predictions] == [p.class_id for p in full.predictions[:3]]


def test_top_k_zero_means_one(stub):
    response = stub.Classify(request(enc(sample())), timeout=30)
    assert len(response.classifications[0].predictions) == 1


def test_every_format_in_one_request_answers_for_its_own_pixels(stub, models_dir):
    """Each served answer is the model's answer for that image's decoded pixels (an in-process
    OnnxRunner on the same pixels), and those pixels are the sample's, not a blank."""
    base = Image.fromarray(255 - pixels()).resize((56, 56))  # dark on light, larger: decoded path
    files = [encode(base, fmt) for fmt in ("PNG", "JPEG", "BMP", "GIF", "WEBP")]
    files.append(encode(base.convert("RGBA"), "PNG"))
    files.append(encode(base.convert("RGB").convert("CMYK"), "JPEG"))
    files.append(encode(Image.fromarray(np.asarray(base).astype(np.uint16) * 257), "PNG"))
    response = stub.Classify(request(*[enc(f) for f in files], top_k=10), timeout=30)
    assert len(response.classifications) == len(files)
    decoded = np.stack([imagefile.decode_encoded(f) for f in files])[:, None]
    for image in decoded[:, 0]:
        assert np.abs(image.astype(int) - pixels().astype(int)).mean() < 40  # the sample, roughly
    runner = OnnxRunner(models_dir / "lenet_bn" / "1" / "model.onnx", ["CPUExecutionProvider"])
    expected = runner.run(decoded).probabilities
    runner.close()
    for served, want in zip(response.classifications, expected):
        got = np.zeros(10, np.float32)
        for p in served.predictions:
            got[p.class_id] = p.probability
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_a_call_without_a_deadline_works(stub):
    assert stub.Classify(request(enc(sample()))).model == "lenet_bn"


def test_version_can_be_named(stub):
    assert stub.Classify(request(enc(sample()), version=1), timeout=30).version == 1


# --- errors --------------------------------------------------------------------------------------

def test_unknown_model_is_not_found_and_lists_the_served_ones(stub):
    e = rpc_error(stub.Classify, request(enc(sample()), model="resnet1000"))
    assert e.code() == grpc.StatusCode.NOT_FOUND
    assert "resnet1000" in e.details() and "lenet (versions 1)" in e.details()
    assert "lenet_bn (versions 1)" in e.details()


def test_unknown_version_is_not_found(stub):
    e = rpc_error(stub.Classify, request(enc(sample()), version=7))
    assert e.code() == grpc.StatusCode.NOT_FOUND and "version 7" in e.details()


@pytest.mark.parametrize("kw,images,message", [
    ({"top_k": 11}, 1, "top_k must be 0..10"),
    ({}, 0, "no images"),
    ({}, TEST_LIMITS.max_images_per_request + 1, "over the limit of 16 per request"),
    ({"inversion": 7}, 1, "inversion must be one of"),
    ({"model": ""}, 1, "model is required"),
])
def test_bad_request_fields_are_invalid_argument(stub, kw, images, message):
    kw.setdefault("model", "lenet_bn")
    req = pb.ClassifyRequest(images=[enc(sample())] * images, **kw)
    e = rpc_error(stub.Classify, req)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in e.details()


def truncated_png() -> bytes:
    data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)))
    return data[: len(data) // 2]


BAD_IMAGES = {
    "truncated PNG": (enc(truncated_png()), "truncated or corrupt PNG"),
    "zero bytes": (enc(b""), "empty image"),
    "random bytes": (enc(np.random.default_rng(1).bytes(3000)), "not a PNG, JPEG"),
    "raw of 783 bytes": (raw(b"\0" * 783), "exactly 784 bytes"),
    "20000x20000 PNG": (enc(huge_png(20000, 20000)), "too many pixels"),
    "over the server's pixel limit": (enc(huge_png(3000, 2000)), "over the limit of 4,000,000"),
    "neither encoded nor raw": (pb.Image(), "no image data"),
}


@pytest.mark.parametrize("case", BAD_IMAGES)
def test_one_bad_image_among_good_ones_names_its_index(stub, case):
    bad, reason = BAD_IMAGES[case]
    e = rpc_error(stub.Classify, request(enc(sample()), raw(pixels().tobytes()), bad, enc(sample())))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.details().startswith("image 2: ") and reason in e.details()


def test_bad_requests_do_not_disturb_concurrent_good_ones(stub):
    good = request(*[enc(sample(n)) for n in ("bag.png", "coat.png", "trouser.png")], top_k=3)
    expected = stub.Classify(good, timeout=30)
    bad = [request(enc(sample()), enc(b"garbage")), request(enc(huge_png(20000, 20000))),
           request(raw(b"\1" * 5)), request(enc(truncated_png()))]

    def call(req):
        try:
            return stub.Classify(req, timeout=60)
        except grpc.RpcError as e:
            return e.code()

    with futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(call, [good, *bad] * 6))
    for i, result in enumerate(results):
        if i % 5 == 0:
            assert result == expected
        else:
            assert result == grpc.StatusCode.INVALID_ARGUMENT


def test_failed_calls_are_freed_without_the_garbage_collector(stub):
    """A failed call must not keep its request alive in a reference cycle. Two did: grpc keeps
    the exception `context.abort` raises, whose traceback holds the handler's frame and request;
    and an awaited future held in a local holds its error, whose traceback holds that frame
    with the images. Under a flood of failing requests the server held 150-250 MB until a
    collection. Measured with the collector off, so only what reference counting frees counts
    as freed (tracemalloc sees the server's thread too)."""
    junk = request(*[enc(b"\x89PNG not a png" + bytes(200_000))] * 4)  # 800 kB, INVALID_ARGUMENT

    def code_of(req):  # no exception kept: a pytest.raises frame would itself make a cycle
        try:
            stub.Classify(req, timeout=30)
        except grpc.RpcError as e:
            return e.code()

    assert code_of(junk) == grpc.StatusCode.INVALID_ARGUMENT  # warm: lazily made objects
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        codes = {code_of(junk) for _ in range(20)}
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        gc.enable()
    assert codes == {grpc.StatusCode.INVALID_ARGUMENT}
    assert held < 4 * 1024 * 1024, f"{held / 2**20:.1f} MiB still held after 20 failed calls of 800 kB"


def test_message_over_the_size_limit_is_resource_exhausted(stub):
    big = enc(b"\0" * (TEST_LIMITS.max_message_bytes + 1))
    e = rpc_error(stub.Classify, request(big))
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# --- ListModels, health, reflection --------------------------------------------------------------

def test_list_models(stub, models_dir):
    response = stub.ListModels(pb.ListModelsRequest(), timeout=30)
    assert [(m.name, m.version) for m in response.models] == [("lenet", 1), ("lenet_bn", 1)]
    for m in response.models:
        assert m.provider == "CPUExecutionProvider" and m.input_side == 28
        assert list(m.labels)[9] == "Ankle boot" and len(m.labels) == 10
        assert 0.0 <= m.test_accuracy <= 1.0
        assert m.test_images == 256  # the whole synthetic test set of the fmnist_dir fixture
    assert response.limits == pb.Limits(max_images_per_request=16, max_image_pixels=4_000_000,
                                        max_message_bytes=1024 * 1024,
                                        max_request_pixels=TEST_LIMITS.max_request_pixels)


@pytest.mark.parametrize("service", ["", "fmnist.v1.Classifier", "fmnist.v1.Classifier/lenet",
                                     "fmnist.v1.Classifier/lenet_bn"])
def test_health_is_serving(channel, service):
    health = health_pb2_grpc.HealthStub(channel)
    response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_health_of_an_unknown_model_is_not_found(channel):
    health = health_pb2_grpc.HealthStub(channel)
    e = rpc_error(health.Check, health_pb2.HealthCheckRequest(service="fmnist.v1.Classifier/nope"))
    assert e.code() == grpc.StatusCode.NOT_FOUND


# --- servers of their own ------------------------------------------------------------------------

def serve(models, limits=Limits(), **kw):
    srv, port = create_server(models=models, port=0, limits=limits, **kw)
    srv.start()
    return srv, grpc.insecure_channel(f"127.0.0.1:{port}")


def test_a_missing_or_empty_models_folder_is_refused(tmp_path):
    with pytest.raises(StartupError, match="missing does not exist"):
        create_server(tmp_path / "missing", port=0, device="cpu")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StartupError, match="a-file is not a folder"):
        create_server(tmp_path / "a-file", port=0, device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StartupError, match="no model in .* could be served .*--allow-empty"):
        create_server(tmp_path / "empty", port=0, device="cpu")


def test_server_allowed_to_start_empty_answers_not_found_and_is_not_serving(tmp_path):
    (tmp_path / "empty").mkdir()
    srv, port = create_server(tmp_path / "empty", port=0, device="cpu", allow_empty=True)
    srv.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.ClassifierStub(ch)
            assert list(stub.ListModels(pb.ListModelsRequest(), timeout=10).models) == []
            e = rpc_error(stub.Classify, request(enc(sample()), model="lenet"))
            assert e.code() == grpc.StatusCode.NOT_FOUND and "none" in e.details()
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        srv.stop(0)


def test_requests_beyond_the_in_flight_limit_are_resource_exhausted():
    model = fake_model("slow", delay=1.0)
    srv, ch = serve([model], Limits(max_in_flight=1))
    stub = pb_grpc.ClassifierStub(ch)
    try:
        with futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(stub.Classify, request(raw(b"\0" * 784), model="slow"), timeout=30)
            assert model.runner.started.wait(10)
            e = rpc_error(stub.Classify, request(raw(b"\0" * 784), model="slow"))
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit of 1 requests in flight" in e.details()
            assert first.result().model == "slow"
    finally:
        ch.close()
        srv.stop(0)


def test_unexpected_errors_are_internal_with_a_logged_traceback(caplog):
    srv, ch = serve([fake_model("broken", error=RuntimeError("kaboom")), fake_model("fine")])
    stub = pb_grpc.ClassifierStub(ch)
    try:
        with caplog.at_level(logging.ERROR, logger="server.api.grpc.classifier"):
            e = rpc_error(stub.Classify, request(raw(b"\0" * 784), model="broken"))
        assert e.code() == grpc.StatusCode.INTERNAL and "kaboom" not in e.details()
        record = next(r for r in caplog.records if "INTERNAL" in r.getMessage())
        assert record.exc_info and "kaboom" in caplog.text
        assert stub.Classify(request(raw(b"\0" * 784), model="fine"), timeout=10).model == "fine"
    finally:
        ch.close()
        srv.stop(0)


def test_deadline_too_short_is_refused_before_running():
    model = fake_model("slow", delay=0.5)
    srv, ch = serve([model])
    stub = pb_grpc.ClassifierStub(ch)
    try:
        stub.Classify(request(raw(b"\0" * 784), model="slow"), timeout=30)  # learns: ~0.5 s a run
        with pytest.raises(grpc.RpcError) as e:
            stub.Classify(request(raw(b"\0" * 784), model="slow"), timeout=0.2)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert model.runner.runs == 1  # the server did not start a run it could not finish in time
    finally:
        ch.close()
        srv.stop(0)


def test_stop_drains_in_flight_requests_and_refuses_new_ones():
    """The request in flight runs until the test opens its runner's gate: it is still in flight
    while the draining server is asked, however slow this machine is."""
    model = fake_model("slow", gate=threading.Event())
    srv, ch = serve([model])
    stub = pb_grpc.ClassifierStub(ch)
    health = health_pb2_grpc.HealthStub(ch)
    try:
        with futures.ThreadPoolExecutor(2) as pool:
            in_flight = pool.submit(stub.Classify, request(raw(b"\0" * 784), model="slow"), timeout=30)
            assert model.runner.started.wait(10)
            stopping = threading.Thread(target=srv.stop, args=(10,))
            stopping.start()
            until(lambda: srv.core.draining, timeout=10, what="the server draining after stop()")
            e = rpc_error(stub.Classify, request(raw(b"\0" * 784), model="slow"))
            assert e.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in e.details()
            draining = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert draining.status == health_pb2.HealthCheckResponse.NOT_SERVING
            model.runner.gate.set()
            assert in_flight.result().model == "slow"  # finished within the grace period
            stopping.join()
        assert model.runner.closed
        with pytest.raises(grpc.RpcError):  # and the port is closed
            health.Check(health_pb2.HealthCheckRequest(), timeout=2)
    finally:
        model.runner.gate.set()
        ch.close()


def test_stop_reports_requests_cut_off_by_the_grace_period():
    model = fake_model("slow", delay=2.0)
    srv, ch = serve([model])
    stub = pb_grpc.ClassifierStub(ch)
    try:
        with futures.ThreadPoolExecutor(1) as pool:
            cut = pool.submit(stub.Classify, request(raw(b"\0" * 784), model="slow"), timeout=30)
            assert model.runner.started.wait(10)
            assert srv.stop(0.2) is False  # one request was still running when the grace ended
            with pytest.raises(grpc.RpcError):
                cut.result()
    finally:
        ch.close()
