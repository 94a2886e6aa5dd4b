"""One readiness truth: in every state a server can be in, gRPC health (the server's names and a
model's), KServe ServerReady and ModelReady over gRPC, and HTTP /v2/health/ready and
/v2/models/{m}/ready all say the same thing, as load balancers and Kubernetes probes read them.

States: starting (the ports bound, the models loading: nothing answers, which a probe reads as
not ready), serving, empty (--allow-empty, no model), everything unloaded on request, draining
(SIGTERM with a request in flight), and --workers with one worker down."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import urllib.error
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inference import grpc_service_pb2 as v2
from inference import grpc_service_pb2_grpc as v2_grpc

from harness.process import ServerProcess
from harness.wait import until
from server.api.security import Security
from server.app import create_server
from tests.server.fakes import fake_model
from tests.serving_fixtures import models_dir  # noqa: F401 - fixture

MODEL = "lenet"
READY = {"health": "SERVING", "classifier": "SERVING", "model health": "SERVING",
         "ServerReady": True, "ModelReady": True, "http ready": 200, "http model ready": 200}
NOT_READY = {"health": "NOT_SERVING", "classifier": "NOT_SERVING", "ServerReady": False,
             "ModelReady": False, "http ready": 503}


def answers(grpc_port: int, http_port: int, model: str = MODEL) -> dict:
    """What every readiness question answers now (a call that gets no answer: its code)."""
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        kserve = v2_grpc.GRPCInferenceServiceStub(channel)
        ask = {"health": lambda: _status(health, ""),
               "classifier": lambda: _status(health, "fmnist.v1.Classifier"),
               "model health": lambda: _status(health, f"fmnist.v1.Classifier/{model}"),
               "ServerReady": lambda: kserve.ServerReady(v2.ServerReadyRequest(),
                                                         timeout=5).ready,
               "ModelReady": lambda: kserve.ModelReady(v2.ModelReadyRequest(name=model),
                                                       timeout=5).ready}
        out = {name: _answer(question) for name, question in ask.items()}
    out["http ready"] = _http(http_port, "/v2/health/ready")
    out["http model ready"] = _http(http_port, f"/v2/models/{model}/ready")
    return out


def _status(health, service: str) -> str:
    return health_pb2.HealthCheckResponse.ServingStatus.Name(
        health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def _answer(question):
    try:
        return question()
    except grpc.RpcError as e:
        return e.code().name


def _http(port: int, path: str):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return "no answer"


def matches(got: dict, expected: dict) -> bool:
    return all(got[key] == value for key, value in expected.items())


@pytest.fixture
def root(models_dir, tmp_path):  # noqa: F811
    shutil.copytree(models_dir, tmp_path / "models")
    return tmp_path / "models"


def test_starting_answers_nothing_then_serving_answers_ready(root):
    srv, port = create_server(root, port=0, device="cpu", http_port=0)
    try:
        assert srv.core.not_ready() == "starting" and not srv.core.ready()
        got = answers(port, srv.http_port)
        assert got["health"] in ("UNAVAILABLE", "DEADLINE_EXCEEDED") and \
            got["http ready"] == "no answer"
        srv.start()
        assert answers(port, srv.http_port) == READY
    finally:
        srv.stop(0)


def test_an_empty_server_is_not_ready_anywhere(tmp_path):
    (tmp_path / "models").mkdir()
    srv, port = create_server(tmp_path / "models", port=0, device="cpu", http_port=0,
                              allow_empty=True)
    srv.start()
    try:
        got = answers(port, srv.http_port)
    finally:
        srv.stop(0)
    assert matches(got, NOT_READY), got
    assert got["model health"] == "NOT_FOUND" and got["http model ready"] == 404


def test_a_server_whose_models_were_all_unloaded_is_not_ready_anywhere(root):
    srv, port = create_server(root, port=0, device="cpu", http_port=0,
                              security=Security(repository_api=True))
    srv.start()
    try:
        assert answers(port, srv.http_port) == READY
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            for name in ("lenet", "lenet_bn"):
                v2_grpc.GRPCInferenceServiceStub(channel).RepositoryModelUnload(
                    v2.RepositoryModelUnloadRequest(model_name=name), timeout=60)
        got = answers(port, srv.http_port)
    finally:
        srv.stop(0)
    assert matches(got, NOT_READY), got
    assert got["model health"] == "NOT_SERVING" and got["http model ready"] == 404


def test_a_draining_server_is_not_ready_anywhere():
    model = fake_model(MODEL, gate=threading.Event())
    srv, port = create_server(models=[model], port=0, http_port=0)
    srv.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        held = threading.Thread(target=lambda: _answer(lambda: v2_grpc.GRPCInferenceServiceStub(
            channel).ModelInfer(_infer(), timeout=30)))
        held.start()
        assert model.runner.started.wait(10)
        stopping = threading.Thread(target=srv.stop, args=(30,))
        stopping.start()
        until(lambda: srv.core.draining, 10, "the server draining")
        try:
            got = answers(port, srv.http_port)
        finally:
            model.runner.gate.set()
            held.join(30)
            stopping.join(30)
    assert matches(got, {**NOT_READY, "model health": "NOT_SERVING"}), got
    assert got["http model ready"] == 503


def test_with_a_worker_down_every_protocol_says_not_ready(root):
    """--workers 2, one killed while the models are away (so its replacement cannot start):
    the parent's gate closes, and both protocols, on whichever worker answers, say so."""
    away = root.parent / "away"
    with ServerProcess("--models-dir", str(root), "--port", "0", "--device", "cpu",
                       "--workers", "2", "--poll-seconds", "0", http=True) as server:
        port = server.wait_for_port()
        server.wait_for_log("health SERVING: every worker serves")
        assert answers(port, server.http_port) == READY
        pid = _a_worker(server)
        (root / "lenet").rename(away)
        os.kill(pid, signal.SIGKILL)
        server.wait_for_log("the parent's gate is closed")
        got = answers(port, server.http_port)
        away.rename(root / "lenet")
    assert got["health"] == got["classifier"] == "NOT_SERVING", got
    assert got["ServerReady"] is False and got["http ready"] == 503, got


def _a_worker(server: ServerProcess) -> int:
    line = next(line for line in server.lines if ") started: metrics on" in line)
    return int(line.split("(pid ")[1].split(")")[0])


def _infer() -> v2.ModelInferRequest:
    return v2.ModelInferRequest(model_name=MODEL, inputs=[v2.ModelInferRequest.InferInputTensor(
        name="image", datatype="UINT8", shape=[1, 1, 28, 28])], raw_input_contents=[bytes(784)])

