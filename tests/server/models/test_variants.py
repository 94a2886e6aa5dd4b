"""A precision variant is served as its own model, "<arch>:<variant>" (lenet_bn:int8): through
fmnist.v1 and KServe v2, in health names, metrics labels and ListModels, and by the client's
--variant. The variant comes from the real exporter (`--variants int8`) on a briefly trained
lenet_bn (tests/serving_fixtures.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import grpc
import numpy as np
import pytest
from fmnist.v1 import classifier_pb2 as pb
from fmnist.v1 import classifier_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inference import grpc_service_pb2 as v2
from inference import grpc_service_pb2_grpc as v2_grpc

import model_contract as mc
from server.app import create_server
from server.models.providers import ProviderPolicy
from server.models.loading import load_models
from server.models.scan import scan
from harness.process import by_labels, scrape
from tests.serving_fixtures import REPO, models_dir, run_cli  # noqa: F401 - fixtures

INT8 = "lenet_bn:int8"


@pytest.fixture(scope="module")
def variant_dir(models_dir, fmnist_dir, tmp_path_factory):  # noqa: F811
    """A models folder with lenet_bn v1: model.onnx and model.int8.onnx."""
    artifacts = tmp_path_factory.mktemp("variant-artifacts")
    shutil.copytree(models_dir.parent / "checkpoints" / "lenet_bn",
                    artifacts / "checkpoints" / "lenet_bn")
    run_cli("-m", "exporter", "--models", "lenet_bn", "--artifacts", str(artifacts),
            "--data-dir", str(fmnist_dir), "--no-progress", "--variants", "int8",
            "--int8-recipes", "s8s8-pc-minmax-float-ends")
    assert (artifacts / "models" / "lenet_bn" / "1" / "model.int8.onnx").is_file()
    return artifacts / "models"


@pytest.fixture(scope="module")
def server(variant_dir):
    srv, port = create_server(variant_dir, port=0, device="cpu", metrics_port=0)
    srv.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield srv, channel
    srv.stop(0)


def probe_of(variant_dir):
    from exporter import metadata  # the test reads the file as the exporter wrote it
    return mc.decode_probe(metadata.read(variant_dir / "lenet_bn" / "1" / "model.int8.onnx")[mc.PROBE])


def test_listed_with_variant_agreement_speed_and_probe(server):
    _, channel = server
    listing = pb_grpc.ClassifierStub(channel).ListModels(pb.ListModelsRequest(), timeout=10)
    models = {m.name: m for m in listing.models}
    assert set(models) == {"lenet_bn", INT8}
    fp32, int8 = models["lenet_bn"], models[INT8]
    assert (fp32.variant, int8.variant) == ("", "int8")
    assert int8.version == fp32.version == 1
    assert not fp32.HasField("fp32_agreement") and not fp32.HasField("speedup_vs_fp32")
    assert 0.99 <= int8.fp32_agreement <= 1.0
    assert int8.HasField("speedup_vs_fp32") and int8.speedup_vs_fp32 > 0
    assert int8.HasField("probe_max_abs_diff")
    assert int8.probe_max_abs_diff <= mc.VARIANT_PROBE_TOLERANCE["int8"]
    assert int8.provider == "CPUExecutionProvider"
    assert not listing.refused


def test_classify_by_variant_name(server, variant_dir):
    _, channel = server
    probe = probe_of(variant_dir)
    request = pb.ClassifyRequest(model=INT8, top_k=10,
                                 images=[pb.Image(raw=img.tobytes()) for img in probe.images[:4]])
    reply = pb_grpc.ClassifierStub(channel).Classify(request, timeout=10)
    assert (reply.model, reply.version) == (INT8, 1)
    for got, want in zip(reply.classifications, probe.probabilities):
        p = np.zeros(10)
        for pred in got.predictions:
            p[pred.class_id] = pred.probability
        assert np.abs(p - want).max() <= mc.VARIANT_PROBE_TOLERANCE["int8"]


def test_kserve_v2_by_variant_name(server, variant_dir):
    _, channel = server
    stub = v2_grpc.GRPCInferenceServiceStub(channel)
    assert stub.ModelReady(v2.ModelReadyRequest(name=INT8), timeout=10).ready
    assert stub.ModelMetadata(v2.ModelMetadataRequest(name=INT8), timeout=10).name == INT8
    probe = probe_of(variant_dir)
    request = v2.ModelInferRequest(
        model_name=INT8, inputs=[v2.ModelInferRequest.InferInputTensor(
            name="image", datatype="UINT8", shape=[len(probe.images), 1, 28, 28])],
        outputs=[v2.ModelInferRequest.InferRequestedOutputTensor(name="probabilities")],
        raw_input_contents=[probe.images.tobytes()])
    reply = stub.ModelInfer(request, timeout=10)
    assert reply.model_name == INT8 and reply.model_version == "1"
    got = np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(-1, 10)
    assert np.abs(got - probe.probabilities).max() <= mc.VARIANT_PROBE_TOLERANCE["int8"]
    index = stub.RepositoryIndex(v2.RepositoryIndexRequest(), timeout=10)
    assert {(m.name, m.state) for m in index.models} == {("lenet_bn", "READY"), (INT8, "READY")}


def test_health_and_metrics_names(server):
    srv, channel = server
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service=f"fmnist.v1.Classifier/{INT8}"),
                          timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    pb_grpc.ClassifierStub(channel).Classify(
        pb.ClassifyRequest(model=INT8, images=[pb.Image(raw=bytes(784))]), timeout=10)
    samples = scrape(srv.metrics.port)
    requests = by_labels(samples, "fmnist_requests_total", "model", "protocol", "code")
    assert requests.get((INT8, "fmnist.v1", "OK"), 0) >= 1
    ready = by_labels(samples, "fmnist_model_ready", "model", "version", "provider")
    assert ready[(INT8, "1", "CPUExecutionProvider")] == 1


def test_client_variant_flag_and_list(server):
    srv, _ = server
    base = [sys.executable, "client/predict.py", "--server", f"127.0.0.1:{srv.port}"]
    out = subprocess.run([*base, "--model", "lenet_bn", "--variant", "int8",
                          "samples/ankle_boot.png"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"[{INT8} v1]" in out.stdout
    listing = subprocess.run([*base, "--list"], cwd=REPO, capture_output=True, text=True,
                             timeout=60)
    row = next(line.split() for line in listing.stdout.splitlines() if line.startswith(INT8))
    assert row[1:3] == ["1", "int8"] and row[6] == "CPUExecutionProvider"
    assert row[8].endswith("%")  # agreement with fp32
    assert row[9].endswith("x")  # batch-32 speed over fp32, measured by the server


def test_a_variant_whose_metadata_names_another_variant_is_refused(variant_dir, tmp_path):
    copy = tmp_path / "models"
    shutil.copytree(variant_dir, copy)
    version = copy / "lenet_bn" / "1"
    (version / "model.int8.onnx").rename(version / "model.fp16.onnx")
    (copy / "lenet_bn:int8").mkdir()  # a folder named like a variant is never a model
    assert set(scan(copy)) == {"lenet_bn", "lenet_bn:fp16"}
    refused = []
    loaded = load_models(copy, ProviderPolicy("cpu"), refused=refused)
    assert [m.spec.name for m in loaded] == ["lenet_bn"]
    assert [(r.name, r.version) for r in refused] == [("lenet_bn:fp16", 1)]
    assert "fmnist.variant='int8' does not match its file 'model.fp16.onnx'" in refused[0].reason
