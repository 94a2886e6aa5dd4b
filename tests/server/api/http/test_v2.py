"""KServe v2 REST with the real client, tritonclient.http (unmodified), and with hand-written JSON:
the answers are gRPC's, to the bit, and every bad request is the right status with gRPC's words.

tritonclient.http runs in this process: unlike tritonclient.grpc it registers no protobuf
messages of its own, so it does not clash with the server's stubs.
"""

from __future__ import annotations

import base64
import json
import struct

import grpc
import numpy as np
import pytest
import tritonclient.http as triton
from fmnist.v1 import classifier_pb2 as pb
from inference import grpc_service_pb2 as v2_pb
from inference import grpc_service_pb2_grpc as v2_grpc
from tritonclient.utils import InferenceServerException

import server as server_package
from server.api.security import Security
from server.app import create_server
from tests.server.answers import classify_probabilities
from tests.server.api.http.web import call, post_json, sample_pixels, sample_png

MODEL = "lenet_bn"
SAMPLES = ("coat", "bag", "trouser", "sneaker")


@pytest.fixture(scope="module")
def client(http_server):
    return triton.InferenceServerClient(f"127.0.0.1:{http_server.http_port}")


def image_input(pixels: np.ndarray, binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("image", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    return tensor


# --- health and metadata -----------------------------------------------------------------------

def test_live_ready_and_model_ready(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready("no-such-model") and not client.is_model_ready(MODEL, "7")


def test_server_and_model_metadata(client):
    metadata = client.get_server_metadata()
    assert (metadata["name"], metadata["version"]) == ("fmnist-serve", server_package.__version__)
    assert sorted(metadata["extensions"]) == ["classification", "model_configuration",
                                              "model_repository", "statistics"]
    model = client.get_model_metadata(MODEL)
    assert (model["name"], model["versions"], model["platform"]) == (MODEL, ["1"],
                                                                     "onnxruntime_onnx")
    assert [(t["name"], t["datatype"], t["shape"]) for t in model["inputs"]] == [
        ("image", "UINT8", [-1, 1, 28, 28]), ("image_bytes", "BYTES", [-1])]
    assert [(t["name"], t["datatype"], t["shape"]) for t in model["outputs"]] == [
        ("logits", "FP32", [-1, 10]), ("probabilities", "FP32", [-1, 10])]
    assert client.get_model_metadata(MODEL, "1") == model


def test_metadata_is_what_grpc_v2_says(http_server, base):
    with grpc.insecure_channel(f"127.0.0.1:{http_server.port}") as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        config = stub.ModelConfig(v2_pb.ModelConfigRequest(name=MODEL), timeout=30).config
    http = call(f"{base}/v2/models/{MODEL}/config").json
    assert (http["name"], http["max_batch_size"], http["backend"]) == (
        config.name, config.max_batch_size, "onnxruntime")
    assert [(i["name"], i["data_type"], i["dims"]) for i in http["input"]] == [
        (i.name, "TYPE_UINT8" if i.name == "image" else "TYPE_STRING", list(i.dims))
        for i in config.input]
    assert http["dynamic_batching"]["max_queue_delay_microseconds"] == 2000


# --- inference ---------------------------------------------------------------------------------

@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_pixels_give_grpcs_probabilities(client, stub, binary):
    pixels = sample_pixels(*SAMPLES)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary)
               for name in ("probabilities", "logits")]
    result = client.infer(MODEL, [image_input(pixels, binary)], outputs=outputs)
    response = result.get_response()
    assert (response["model_name"], response["model_version"]) == (MODEL, "1")
    assert all(("data" in o) != binary for o in response["outputs"])  # as asked, each way
    expected = classify_probabilities(stub, MODEL, [pb.Image(raw=p.tobytes()) for p in pixels])
    np.testing.assert_array_equal(result.as_numpy("probabilities"), expected)
    logits = result.as_numpy("logits")
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(softmax, expected, atol=1e-6)


def test_without_outputs_both_come_back_in_binary(client):
    result = client.infer(MODEL, [image_input(sample_pixels("coat"))])
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["logits", "probabilities"]
    assert all(o["parameters"]["binary_data_size"] == 40 for o in response["outputs"])


def test_image_bytes_are_decoded_as_classify_decodes_them(client, stub):
    files = [sample_png(name) for name in SAMPLES]
    tensor = triton.InferInput("image_bytes", [len(files)], "BYTES")
    tensor.set_data_from_numpy(np.array(files, dtype=np.object_))
    result = client.infer(MODEL, [tensor], outputs=[triton.InferRequestedOutput("probabilities")])
    expected = classify_probabilities(stub, MODEL, [pb.Image(encoded=f) for f in files])
    np.testing.assert_array_equal(result.as_numpy("probabilities"), expected)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_extension(client, stub, binary):
    pixels = sample_pixels(*SAMPLES)
    result = client.infer(MODEL, [image_input(pixels)], outputs=[
        triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)])
    strings = result.as_numpy("probabilities")
    assert strings.shape == (4, 3)
    expected = classify_probabilities(stub, MODEL, [pb.Image(raw=p.tobytes()) for p in pixels])
    for row, probabilities in zip(strings, expected):
        top = np.argsort(-probabilities, kind="stable")[:3]
        parsed = [(item.decode() if isinstance(item, bytes) else item).split(":") for item in row]
        assert [int(index) for _, index, _ in parsed] == list(top)
        assert [float(value) for value, _, _ in parsed] == pytest.approx(
            probabilities[top], abs=1e-6)


def test_hand_written_json_flat_or_nested_base64_bytes(base, stub):
    pixels = sample_pixels("coat", "bag")
    url = f"{base}/v2/models/{MODEL}/infer"
    want = [{"name": "probabilities"}]
    nested = post_json(url, {"id": "r1", "outputs": want, "inputs": [
        {"name": "image", "datatype": "UINT8", "shape": [2, 1, 28, 28], "data": pixels.tolist()}]})
    flat = post_json(url, {"outputs": want, "inputs": [
        {"name": "image", "datatype": "UINT8", "shape": [2, 1, 28, 28],
         "data": pixels.ravel().tolist()}]})
    encoded = post_json(url, {"outputs": want, "inputs": [
        {"name": "image_bytes", "datatype": "BYTES", "shape": [2],
         "data": [base64.b64encode(sample_png(n)).decode() for n in ("coat", "bag")]}]})
    assert nested.status == flat.status == encoded.status == 200
    assert nested.json["id"] == "r1" and "id" not in flat.json
    images = [pb.Image(raw=p.tobytes()) for p in pixels]
    expected = classify_probabilities(stub, MODEL, images).ravel()
    for answer in (nested, flat, encoded):
        (output,) = answer.json["outputs"]
        assert (output["name"], output["datatype"], output["shape"]) == (
            "probabilities", "FP32", [2, 10])
        np.testing.assert_array_equal(np.array(output["data"], np.float32), expected)


def test_binary_body_as_tritonclient_sends_it_by_hand(base):
    """Inference-Header-Content-Length and binary_data_size, written out: what the extension is."""
    pixels = sample_pixels("coat")
    header = json.dumps({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 1, 28, 28],
                                     "parameters": {"binary_data_size": 784}}],
                         "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]})
    answer = call(f"{base}/v2/models/{MODEL}/infer", header.encode() + pixels.tobytes(),
                  {"Inference-Header-Content-Length": str(len(header)),
                   "Content-Type": "application/octet-stream"})
    assert answer.status == 200
    size = int(answer.headers["Inference-Header-Content-Length"])
    meta = json.loads(answer.body[:size])
    assert meta["outputs"][0]["parameters"] == {"binary_data_size": 40}
    assert len(struct.unpack("<10f", answer.body[size:])) == 10


# --- statistics, repository --------------------------------------------------------------------

def test_statistics_count_http_inference(client):
    before = client.get_inference_statistics(MODEL)["model_stats"][0]["inference_count"]
    client.infer(MODEL, [image_input(sample_pixels("coat", "bag"))])
    stats = client.get_inference_statistics(MODEL, "1")["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [(MODEL, "1")]
    assert stats[0]["inference_count"] == before + 2
    every = client.get_inference_statistics()["model_stats"]
    assert sorted(s["name"] for s in every) == ["lenet", "lenet_bn"]


def test_repository_index_unload_and_load(models_dir):
    srv, _ = create_server(models_dir, port=0, device="cpu", http_port=0,
                           security=Security(repository_api=True))
    srv.start()
    try:
        client = triton.InferenceServerClient(f"127.0.0.1:{srv.http_port}")
        index = client.get_model_repository_index()
        assert [(m["name"], m["version"], m["state"]) for m in index] == [
            ("lenet", "1", "READY"), ("lenet_bn", "1", "READY")]
        client.unload_model("lenet")
        assert not client.is_model_ready("lenet") and client.is_model_ready(MODEL)
        client.load_model("lenet")
        assert client.is_model_ready("lenet")
    finally:
        srv.stop(0)


def test_load_without_a_models_folder_is_501(models_dir):
    from server.models.loading import Loader, default_runner_factory
    from server.models.providers import ProviderPolicy
    from server.models.repository import Repository

    models, _ = Repository(models_dir, Loader(ProviderPolicy("cpu"), default_runner_factory)
                           ).load_all()
    srv, _ = create_server(models=models, port=0, http_port=0,
                           security=Security(repository_api=True))
    srv.start()
    try:
        answer = call(f"http://127.0.0.1:{srv.http_port}/v2/repository/models/lenet/load",
                      b"", method="POST")
    finally:
        srv.stop(0)
    assert answer.status == 501 and "no model repository" in answer.error


# --- bad requests: the right status, gRPC's words, and the server goes on ----------------------

def image_tensor(**changes) -> dict:
    tensor = {"name": "image", "datatype": "UINT8", "shape": [1, 1, 28, 28], "data": [0] * 784}
    return {**tensor, **changes}


BAD = [
    ("not JSON", b"{not json", {}, 400, "the request body is not JSON"),
    ("a list", b"[1, 2]", {}, 400, 'a JSON object with "inputs"'),
    ("FP32", {"inputs": [image_tensor(datatype="FP32")]}, {}, 400,
     "input 'image': datatype must be UINT8, got 'FP32'"),
    ("shape", {"inputs": [image_tensor(shape=[1, 28, 28])]}, {}, 400,
     "the models take uint8 of shape [N, 1, 28, 28]"),
    ("count", {"inputs": [image_tensor(data=[0] * 10)]}, {}, 400, "needs 784 values"),
    ("value", {"inputs": [image_tensor(data=[300] * 784)]}, {}, 400, "0..255, got 300"),
    ("type", {"inputs": [image_tensor(data=["a"] * 784)]}, {}, 400, "must be integers 0..255"),
    ("name", {"inputs": [image_tensor(name="pixels")]}, {}, 400, "unknown input 'pixels'"),
    ("two", {"inputs": [image_tensor(), image_tensor()]}, {}, 400, "send one input"),
    ("base64", {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                            "data": ["***"]}]}, {}, 400, "element 0 is not a base64 string"),
    ("output", {"inputs": [image_tensor()], "outputs": [{"name": "scores"}]}, {}, 400,
     "unknown output 'scores'"),
    ("classes", {"inputs": [image_tensor()], "outputs": [
        {"name": "logits", "parameters": {"classification": 11}}]}, {}, 400,
     "classification must be an int64_param from 1 to 10"),
    ("binary size", {"inputs": [image_tensor(data=None, parameters={"binary_data_size": 784})]},
     {"Inference-Header-Content-Length": "all"}, 400, "binary_data_size is 784, but 0 bytes"),
    ("header length", {"inputs": [image_tensor()]}, {"Inference-Header-Content-Length": "-4"},
     400, "Inference-Header-Content-Length must be the size"),
    ("timeout", {"inputs": [image_tensor()], "parameters": {"timeout": "soon"}}, {}, 400,
     "parameters.timeout must be a positive integer of microseconds"),
    ("deadline", {"inputs": [image_tensor()], "parameters": {"timeout": 1}}, {}, 504,
     "the deadline passed"),
]


@pytest.mark.parametrize("body, headers, status, words", [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_bad_inference_requests(base, body, headers, status, words):
    if not isinstance(body, bytes):
        body = json.dumps(body).encode().replace(b'"data": null, ', b"")
    headers = {k: str(len(body)) if v == "all" else v for k, v in headers.items()}
    answer = call(f"{base}/v2/models/{MODEL}/infer", body, headers)
    assert answer.status == status and answer.headers["Content-Type"].startswith("application/json")
    assert words in answer.error
    good = post_json(f"{base}/v2/models/{MODEL}/infer", {"inputs": [image_tensor()]})
    assert good.status == 200  # nothing else affected


@pytest.mark.parametrize("path, status, words", [
    ("/v2/models/no-such-model/infer", 404, ("model 'no-such-model' is not served; served "
                                             "models: lenet (versions 1), lenet_bn (versions 1)")),
    (f"/v2/models/{MODEL}/versions/7/infer", 404, "version 7 is not served"),
    (f"/v2/models/{MODEL}/versions/01/infer", 400, "a positive integer, got '01'"),
])
def test_unknown_models_and_versions(base, path, status, words):
    answer = post_json(base + path, {"inputs": [image_tensor()]})
    assert answer.status == status and words in answer.error


def test_the_messages_are_grpcs(http_server, base):
    """The same request over both protocols fails with the same words."""
    cases = {"no-such-model": image_tensor(), MODEL: image_tensor(datatype="FP32")}
    with grpc.insecure_channel(f"127.0.0.1:{http_server.port}") as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        for model, tensor in cases.items():
            request = v2_pb.ModelInferRequest(model_name=model, inputs=[
                v2_pb.ModelInferRequest.InferInputTensor(name="image", datatype=tensor["datatype"],
                                                         shape=tensor["shape"])],
                raw_input_contents=[bytes(784)])
            with pytest.raises(grpc.RpcError) as failed:
                stub.ModelInfer(request, timeout=30)
            answer = post_json(f"{base}/v2/models/{model}/infer", {"inputs": [tensor]})
            assert answer.error == failed.value.details()


def test_tritonclient_sees_the_status_and_the_message(client):
    with pytest.raises(InferenceServerException) as failed:
        client.infer("no-such-model", [image_input(sample_pixels("coat"))])
    assert failed.value.status() == "404"
    assert "model 'no-such-model' is not served" in failed.value.message()


def test_unknown_routes_and_methods_answer_json(base):
    missing = call(f"{base}/v3/nothing")
    assert missing.status == 404 and "/openapi.json" in missing.error
    wrong = call(f"{base}/v2/health/live", b"", method="POST")
    assert wrong.status == 405 and "use GET" in wrong.error
