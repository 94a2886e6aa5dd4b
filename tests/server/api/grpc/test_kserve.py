"""KServe v2 / Triton's GRPCInferenceService with the real client, tritonclient, on real models.

The server runs in this process (conftest's `server`); tritonclient runs in a spawned worker
process (tests/server/triton_calls.py says why it cannot run here). fmnist.v1 is called from
here, so both APIs are compared on the same server.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import shutil
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import grpc
import numpy as np
import pytest
from fmnist.v1 import classifier_pb2 as pb
from inference import grpc_service_pb2 as v2_pb
from PIL import Image

import server as server_package
from server.api.grpc.kserve import V2Servicer, statistics
from server.api.security import Security
from server.app import create_server
from server.batching.batcher import BatchPolicy, BatchStats
from server.dataplane import views
from server.dataplane.access import Access
from server.dataplane.core import Core
from server.errors import ModelNotFound
from server.models.runner import OnnxRunner
from tests.server import triton_calls
from tests.server.answers import classify_probabilities
from tests.server.fakes import fake_model
from tests.server.images import encode, object_on
from tests.serving_fixtures import SAMPLES

MODEL = "lenet_bn"
PNGS = sorted(SAMPLES.glob("*.png"))


class V2Error(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class Triton:
    """tritonclient's InferenceServerClient, one worker process away; plain values only."""

    def __init__(self, url: str):
        self.url = url
        self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))

    def _result(self, function, *args, **kwargs):
        ok, value = self.pool.submit(function, self.url, *args, **kwargs).result(120)
        if not ok:
            raise V2Error(*value)
        return value

    def __getattr__(self, method: str):
        return lambda *args, **kwargs: self._result(triton_calls.call, method, args, kwargs)

    def infer(self, inputs, outputs=None, model: str = MODEL, **kwargs) -> dict:
        return self._result(triton_calls.infer, model, inputs, outputs, **kwargs)

    def infer_typed(self, images: np.ndarray) -> dict:
        return self.pool.submit(triton_calls.infer_typed, self.url, MODEL, images).result(120)


@pytest.fixture(scope="module")
def triton(server):
    client = Triton(f"127.0.0.1:{server.port}")
    yield client
    client.pool.shutdown()


def pixels(n: int) -> np.ndarray:
    """The first n sample images as the model's tensor, uint8 [n, 1, 28, 28]."""
    return np.stack([np.asarray(Image.open(p))[None] for p in PNGS[:n]])


def image_input(images: np.ndarray):
    return [("image", "UINT8", images)]


# --- health and metadata -------------------------------------------------------------------------

def test_live_and_ready(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready(MODEL) and triton.is_model_ready(MODEL, "1")
    assert not triton.is_model_ready("no-such-model")
    assert not triton.is_model_ready(MODEL, "7")


def test_server_metadata(triton):
    metadata = triton.get_server_metadata(as_json=True)
    assert metadata["name"] == "fmnist-serve"
    assert metadata["version"] == server_package.__version__
    assert sorted(metadata["extensions"]) == ["classification", "model_configuration",
                                              "model_repository", "statistics"]


def test_model_metadata(triton):
    metadata = triton.get_model_metadata(MODEL, as_json=True)
    assert (metadata["name"], metadata["versions"], metadata["platform"]) == (
        MODEL, ["1"], "onnxruntime_onnx")
    tensors = lambda key: [(t["name"], t["datatype"], [int(d) for d in t["shape"]])  # noqa: E731
                           for t in metadata[key]]
    assert tensors("inputs") == [("image", "UINT8", [-1, 1, 28, 28]),
                                 ("image_bytes", "BYTES", [-1])]
    assert tensors("outputs") == [("logits", "FP32", [-1, 10]),
                                  ("probabilities", "FP32", [-1, 10])]
    assert triton.get_model_metadata(MODEL, "1", as_json=True) == metadata


def test_model_config(triton, server):
    config = triton.get_model_config(MODEL, as_json=True)["config"]
    policy = BatchPolicy()  # the module's server batches as the defaults say
    assert (config["name"], config["platform"], config["max_batch_size"]) == (
        MODEL, "onnxruntime_onnx", policy.max_batch)
    assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == round(
        policy.max_delay * 1e6)
    image, image_bytes = config["input"]
    assert (image["name"], image["data_type"], image["format"], image["dims"]) == (
        "image", "TYPE_UINT8", "FORMAT_NCHW", ["1", "28", "28"])
    # Triton's way to declare a [batch] tensor: dims [1], reshaped to []
    assert (image_bytes["name"], image_bytes["data_type"], image_bytes["dims"],
            image_bytes["reshape"]) == ("image_bytes", "TYPE_STRING", ["1"], {})
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [
        ("logits", "TYPE_FP32", ["10"]), ("probabilities", "TYPE_FP32", ["10"])]


# --- ModelInfer ----------------------------------------------------------------------------------

@pytest.mark.parametrize("use_async", [False, True], ids=["infer", "async_infer"])
def test_pixels_give_the_probabilities_classify_gives(triton, stub, models_dir, use_async):
    """Both APIs answer what the model itself computes on those pixels (an in-process run)."""
    images = pixels(5)
    result = triton.infer(image_input(images), use_async=use_async)
    assert (result["model_name"], result["model_version"]) == (MODEL, "1")
    outputs = result["outputs"]
    assert sorted(outputs) == ["logits", "probabilities"]
    assert outputs["probabilities"].dtype == np.float32 and outputs["logits"].shape == (5, 10)
    expected = classify_probabilities(stub, MODEL,
                                      [pb.Image(raw=image.tobytes()) for image in images])
    np.testing.assert_array_equal(outputs["probabilities"], expected)
    runner = OnnxRunner(models_dir / MODEL / "1" / "model.onnx", ["CPUExecutionProvider"])
    direct = runner.run(images)
    runner.close()
    np.testing.assert_allclose(outputs["probabilities"], direct.probabilities, rtol=0, atol=1e-6)
    np.testing.assert_allclose(outputs["logits"], direct.logits, rtol=0, atol=1e-5)


def test_typed_contents_give_what_raw_contents_give(triton):
    images = pixels(3)
    np.testing.assert_array_equal(triton.infer_typed(images)["probabilities"],
                                  triton.infer(image_input(images))["outputs"]["probabilities"])


def test_image_bytes_are_decoded_as_classify_decodes_them(triton, stub):
    files = [p.read_bytes() for p in PNGS[:4]] + [encode(object_on(230, size=(90, 60)))]
    result = triton.infer([("image_bytes", "BYTES", np.array(files, dtype=np.object_))],
                          [("probabilities", 0)])
    expected = classify_probabilities(stub, MODEL, [pb.Image(encoded=f) for f in files])
    np.testing.assert_array_equal(result["outputs"]["probabilities"], expected)


def test_only_the_requested_outputs_come_back(triton):
    result = triton.infer(image_input(pixels(2)), [("logits", 0)])
    assert list(result["outputs"]) == ["logits"] and result["outputs"]["logits"].shape == (2, 10)


def test_classification_extension(triton, stub):
    images = pixels(4)
    labels = next(m.labels for m in stub.ListModels(pb.ListModelsRequest(), timeout=30).models
                  if m.name == MODEL)
    result = triton.infer(image_input(images), [("probabilities", 3), ("logits", 2)])["outputs"]
    full = triton.infer(image_input(images))["outputs"]
    for name, k in (("probabilities", 3), ("logits", 2)):
        strings = result[name]
        assert strings.shape == (4, k)
        for row, values in zip(strings, full[name]):
            fields = [s.decode().split(":") for s in row]
            assert [int(index) for _, index, _ in fields] == list(np.argsort(-values)[:k])
            for value, index, label in fields:
                assert label == labels[int(index)]
                assert value == f"{values[int(index)]:f}"  # Triton's %f


@pytest.mark.parametrize("inputs, outputs, model, version, code, words", [
    ([("image", "FP32", np.zeros((1, 1, 28, 28), np.float32))], None, MODEL, "",
     "INVALID_ARGUMENT", ["input 'image'", "UINT8", "FP32"]),
    ([("image", "UINT8", np.zeros((1, 28, 28), np.uint8))], None, MODEL, "",
     "INVALID_ARGUMENT", ["input 'image'", "shape", "[1, 28, 28]"]),
    ([("pixels", "UINT8", np.zeros((1, 1, 28, 28), np.uint8))], None, MODEL, "",
     "INVALID_ARGUMENT", ["unknown input 'pixels'", "'image'", "'image_bytes'"]),
    ([("image_bytes", "BYTES", np.array([b"not an image"], np.object_))], None, MODEL, "",
     "INVALID_ARGUMENT", ["image 0", "not a PNG"]),
    ([("image", "UINT8", np.zeros((1, 1, 28, 28), np.uint8))], [("scores", 0)], MODEL, "",
     "INVALID_ARGUMENT", ["unknown output 'scores'", "'logits'", "'probabilities'"]),
    ([("image", "UINT8", np.zeros((1, 1, 28, 28), np.uint8))], [("logits", 11)], MODEL, "",
     "INVALID_ARGUMENT", ["output 'logits'", "classification", "1 to 10"]),
    ([("image", "UINT8", np.zeros((1, 1, 28, 28), np.uint8))], None, "no-such-model", "",
     "NOT_FOUND", ["'no-such-model'", "lenet_bn"]),
    ([("image", "UINT8", np.zeros((1, 1, 28, 28), np.uint8))], None, MODEL, "7",
     "NOT_FOUND", [f"'{MODEL}' version 7"]),
    ([("image", "UINT8", np.zeros((1, 1, 28, 28), np.uint8))], None, MODEL, "01",
     "INVALID_ARGUMENT", ["version", "'01'"]),
], ids=["dtype", "shape", "input-name", "undecodable", "output-name", "classification",
        "model", "version", "version-text"])
def test_errors_name_what_is_wrong(triton, inputs, outputs, model, version, code, words):
    with pytest.raises(V2Error) as e:
        triton.infer(inputs, outputs, model=model, version=version)
    assert e.value.code == code
    for word in words:
        assert word in e.value.message


def test_two_inputs_are_refused(triton):
    images = pixels(1)
    with pytest.raises(V2Error) as e:
        triton.infer(image_input(images) + [("image_bytes", "BYTES",
                                             np.array([PNGS[0].read_bytes()], np.object_))])
    assert e.value.code == "INVALID_ARGUMENT" and "one input" in e.value.message


# --- statistics and the repository ---------------------------------------------------------------

def test_statistics_count_what_was_sent(triton):
    """One request of 6 images (one batch: nothing else is sent meanwhile) moves the counts by
    exactly that much."""
    def figures() -> dict:
        (s,) = triton.get_inference_statistics(MODEL, as_json=True)["model_stats"]
        stats = s["inference_stats"]
        return {"name": (s["name"], s["version"]), "images": int(s.get("inference_count", 0)),
                "batches": int(s.get("execution_count", 0)),
                "last_ms": int(s.get("last_inference", 0)),
                "queued": int(stats.get("queue", {}).get("count", 0)),
                "computed": int(stats.get("compute_infer", {}).get("count", 0)),
                "compute_ns": int(stats.get("compute_infer", {}).get("ns", 0)),
                "by_size": {int(b["batch_size"]): int(b["compute_infer"]["count"])
                            for b in s.get("batch_stats", [])}}

    before = figures()
    sent_ms = time.time() * 1000
    triton.infer(image_input(pixels(6)))
    after = figures()
    assert after["name"] == (MODEL, "1")
    assert {k: after[k] - before[k] for k in ("images", "batches", "queued", "computed")} == {
        "images": 6, "batches": 1, "queued": 1, "computed": 1}
    assert after["compute_ns"] > before["compute_ns"]
    assert after["by_size"].get(6, 0) - before["by_size"].get(6, 0) == 1
    assert {n: c for n, c in after["by_size"].items() if n != 6} == {
        n: c for n, c in before["by_size"].items() if n != 6}
    assert sent_ms - 1 <= after["last_ms"] <= time.time() * 1000 + 1
    every = triton.get_inference_statistics(as_json=True)["model_stats"]
    assert sorted(s["name"] for s in every) == ["lenet", "lenet_bn"]


def test_statistics_in_triton_terms():
    stats = BatchStats(batches=3, images=10, pieces=5, queue_seconds=0.5, compute_seconds=0.25,
                       by_size={4: [2, 0.2], 2: [1, 0.05]}, last_batch_at=1700000000.25)
    s = statistics(views.statistics("m", 2, stats))
    assert (s.name, s.version, s.last_inference, s.inference_count, s.execution_count) == (
        "m", "2", 1700000000250, 10, 3)
    assert (s.inference_stats.queue.count, s.inference_stats.queue.ns) == (5, 500_000_000)
    assert (s.inference_stats.compute_infer.count, s.inference_stats.compute_infer.ns) == (
        3, 250_000_000)
    assert [(b.batch_size, b.compute_infer.count, b.compute_infer.ns) for b in s.batch_stats] == [
        (2, 1, 50_000_000), (4, 2, 200_000_000)]


@pytest.fixture(scope="module")
def folder(models_dir, tmp_path_factory):  # noqa: F811
    """A server of its own on a copy of the models, with a lenet v2 that cannot load."""
    root = tmp_path_factory.mktemp("v2-repository") / "models"
    shutil.copytree(models_dir, root)
    (root / "lenet" / "2").mkdir()
    (root / "lenet" / "2" / "model.onnx").write_bytes(b"not an onnx file")
    srv, port = create_server(root, port=0, device="cpu", security=Security(repository_api=True))
    srv.start()
    client = Triton(f"127.0.0.1:{port}")
    yield srv, client
    client.pool.shutdown()
    srv.stop(0)


def test_repository_index_lists_served_and_refused_versions(triton, folder):
    assert [(m["name"], m["version"], m["state"]) for m in triton.get_model_repository_index(
        as_json=True)["models"]] == [("lenet", "1", "READY"), ("lenet_bn", "1", "READY")]
    srv, client = folder
    index = client.get_model_repository_index(as_json=True)["models"]
    assert [(m["name"], m["version"], m["state"]) for m in index] == [
        ("lenet", "1", "READY"), ("lenet", "2", "UNAVAILABLE"), ("lenet_bn", "1", "READY")]
    assert "onnx" in index[1]["reason"].lower()
    ready = asyncio.run(V2Servicer(srv.core).RepositoryIndex(
        v2_pb.RepositoryIndexRequest(ready=True), Context()))  # tritonclient cannot ask
    assert [(m.name, m.state) for m in ready.models] == [("lenet", "READY"), ("lenet_bn", "READY")]


def test_unload_and_load_through_the_live_repository(folder):
    _, client = folder
    client.unload_model("lenet")
    assert not client.is_model_ready("lenet") and client.is_model_ready("lenet_bn")
    with pytest.raises(V2Error) as e:
        client.infer(image_input(pixels(1)), model="lenet")
    assert e.value.code == "NOT_FOUND"
    with pytest.raises(V2Error) as e:  # its newest version on disk cannot be served: say so
        client.load_model("lenet")
    assert e.value.code == "FAILED_PRECONDITION", e.value
    assert "'lenet' v2 was not loaded" in e.value.message and "onnx" in e.value.message.lower()
    assert "v1 keeps serving" in e.value.message
    assert client.is_model_ready("lenet", "1")
    assert client.infer(image_input(pixels(1)), model="lenet")["model_version"] == "1"
    with pytest.raises(V2Error) as e:
        client.load_model("no-such-model")
    assert e.value.code == "NOT_FOUND" and "'no-such-model'" in e.value.message


def test_load_and_unload_without_a_models_folder_are_unimplemented():
    srv, port = create_server(models=[fake_model("fake")], port=0, device="cpu",
                              security=Security(repository_api=True))
    srv.start()
    client = Triton(f"127.0.0.1:{port}")
    try:
        extensions = client.get_server_metadata(as_json=True)["extensions"]
        errors = []
        for method in ("load_model", "unload_model"):
            with pytest.raises(V2Error) as e:
                getattr(client, method)("fake")
            errors.append(e.value)
    finally:
        client.pool.shutdown()
        srv.stop(0)
    assert "model_repository" not in extensions
    assert all(e.code == "UNIMPLEMENTED" and "no model repository" in e.message for e in errors)


def test_v2_requests_reach_the_observer_as_v2(triton, server):
    events, before = [], server.core.observer
    server.core.observer = events.append
    try:
        triton.infer(image_input(pixels(2)))
    finally:
        server.core.observer = before
    assert [(e.protocol, e.images, e.model, e.code) for e in events] == [("v2", 2, MODEL, "OK")]


class Context:
    """What the v2 methods use of a grpc.aio context."""

    def peer(self):
        return "test"

    def invocation_metadata(self):
        return ()

    def time_remaining(self):
        return None

    code = details = None

    def set_code(self, code):
        self.code = code

    def set_details(self, details):
        self.details = details


class FakeControl:
    """The dataplane's model control, noting where each call ran."""

    def __init__(self):
        self.calls = []

    def load(self, name):
        self.calls.append(("load", name, threading.current_thread().name))
        if name == "missing":
            raise ModelNotFound(f"no model {name!r} in the models folder")

    def unload(self, name, caller=""):
        self.calls.append(("unload", name, threading.current_thread().name))


def test_load_and_unload_go_to_the_control_off_the_event_loop():
    core = Core([fake_model("fake")], access=Access(repository_api=True))
    core.control = control = FakeControl()
    servicer = V2Servicer(core)

    async def calls():
        await servicer.RepositoryModelLoad(v2_pb.RepositoryModelLoadRequest(model_name="a"),
                                           Context())
        await servicer.RepositoryModelUnload(v2_pb.RepositoryModelUnloadRequest(model_name="b"),
                                             Context())
        missing = Context()
        await servicer.RepositoryModelLoad(v2_pb.RepositoryModelLoadRequest(model_name="missing"),
                                           missing)
        unload = v2_pb.RepositoryModelUnloadRequest(model_name="c")
        unload.parameters["unload_dependents"].bool_param = True  # as tritonclient sends it
        await servicer.RepositoryModelUnload(unload, Context())
        request = v2_pb.RepositoryModelLoadRequest(model_name="a")
        request.parameters["config"].string_param = "{}"
        parameters = Context()
        await servicer.RepositoryModelLoad(request, parameters)
        metadata = await servicer.ServerMetadata(v2_pb.ServerMetadataRequest(), Context())
        return ((missing.code, missing.details), (parameters.code, parameters.details), metadata,
                threading.current_thread().name)

    try:
        missing, parameters, metadata, loop_thread = asyncio.run(calls())
    finally:
        core.close()
    assert [call[:2] for call in control.calls] == [("load", "a"), ("unload", "b"),
                                                     ("load", "missing"), ("unload", "c")]
    assert all(call[2] != loop_thread for call in control.calls)
    assert missing[0] == grpc.StatusCode.NOT_FOUND and "'missing'" in missing[1]
    assert parameters[0] == grpc.StatusCode.INVALID_ARGUMENT and "'config'" in parameters[1]
    assert "model_repository" in metadata.extensions
