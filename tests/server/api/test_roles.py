"""Roles on both protocols (server/dataplane/access.py): every gRPC method and every HTTP route,
called with no token, an inference token and an admin token, against a real server with the
repository API on; then the same server with it off. Only admin tokens change what is served,
health and the API's description stay open, and a refusal names the role or flag it needs."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request

import grpc
import pytest
from fmnist.v1 import classifier_pb2 as pb
from fmnist.v1 import classifier_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inference import grpc_service_pb2 as v2
from inference import grpc_service_pb2_grpc as v2_grpc

from harness.process import ServerProcess
from server.api.security import Security
from server.app import create_server
from tests.serving_fixtures import SAMPLES, models_dir  # noqa: F401 - fixture

INFERENCE, ADMIN = "inference-token-1", "admin-token-2"
MODEL = "lenet"
PNG = (SAMPLES / "bag.png").read_bytes()


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    folder = tmp_path_factory.mktemp("roles")
    (folder / "inference").write_text(f"# readers\nreader {INFERENCE}\n")
    (folder / "admin").write_text(f"operator {ADMIN}\n")
    return folder


def serve(models_dir, tmp_path_factory, tokens, repository_api: bool):  # noqa: F811
    root = tmp_path_factory.mktemp("roles-models") / "models"
    shutil.copytree(models_dir, root)
    srv, port = create_server(root, port=0, device="cpu", http_port=0, security=Security(
        token_file=tokens / "inference", admin_token_file=tokens / "admin",
        repository_api=repository_api))
    srv.start()
    return srv


@pytest.fixture(scope="module")
def server(models_dir, tmp_path_factory, tokens):  # noqa: F811
    srv = serve(models_dir, tmp_path_factory, tokens, repository_api=True)
    yield srv
    srv.stop(0)


# --- the calls: each returns the status code name (gRPC) or number (HTTP) ---------------------

def grpc_calls(channel) -> dict:
    classifier, kserve = pb_grpc.ClassifierStub(channel), v2_grpc.GRPCInferenceServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    image = v2.ModelInferRequest.InferInputTensor(name="image", datatype="UINT8",
                                                  shape=[1, 1, 28, 28])
    return {
        "Classify": lambda md: classifier.Classify(pb.ClassifyRequest(
            model=MODEL, images=[pb.Image(encoded=PNG)]), metadata=md, timeout=30),
        "ListModels": lambda md: classifier.ListModels(pb.ListModelsRequest(), metadata=md,
                                                       timeout=30),
        "Health": lambda md: health.Check(health_pb2.HealthCheckRequest(), metadata=md,
                                          timeout=30),
        "ServerLive": lambda md: kserve.ServerLive(v2.ServerLiveRequest(), metadata=md,
                                                   timeout=30),
        "ServerReady": lambda md: kserve.ServerReady(v2.ServerReadyRequest(), metadata=md,
                                                     timeout=30),
        "ModelReady": lambda md: kserve.ModelReady(v2.ModelReadyRequest(name=MODEL),
                                                   metadata=md, timeout=30),
        "ServerMetadata": lambda md: kserve.ServerMetadata(v2.ServerMetadataRequest(),
                                                           metadata=md, timeout=30),
        "ModelMetadata": lambda md: kserve.ModelMetadata(v2.ModelMetadataRequest(name=MODEL),
                                                         metadata=md, timeout=30),
        "ModelConfig": lambda md: kserve.ModelConfig(v2.ModelConfigRequest(name=MODEL),
                                                     metadata=md, timeout=30),
        "ModelStatistics": lambda md: kserve.ModelStatistics(v2.ModelStatisticsRequest(
            name=MODEL), metadata=md, timeout=30),
        "ModelInfer": lambda md: kserve.ModelInfer(v2.ModelInferRequest(
            model_name=MODEL, inputs=[image], raw_input_contents=[bytes(784)]), metadata=md,
            timeout=30),
        "RepositoryIndex": lambda md: kserve.RepositoryIndex(v2.RepositoryIndexRequest(),
                                                             metadata=md, timeout=30),
        "RepositoryModelUnload": lambda md: kserve.RepositoryModelUnload(
            v2.RepositoryModelUnloadRequest(model_name=MODEL), metadata=md, timeout=60),
        "RepositoryModelLoad": lambda md: kserve.RepositoryModelLoad(
            v2.RepositoryModelLoadRequest(model_name=MODEL), metadata=md, timeout=60),
    }


def grpc_status(call, token: str | None) -> str:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        call(metadata)
    except grpc.RpcError as e:
        return e.code().name
    return "OK"


HTTP_ROUTES = {
    "GET /v1/models": ("GET", "/v1/models", None),
    "POST classify": ("POST", f"/v1/models/{MODEL}:classify", PNG),
    "GET /v2": ("GET", "/v2", None),
    "GET live": ("GET", "/v2/health/live", None),
    "GET ready": ("GET", "/v2/health/ready", None),
    "GET model": ("GET", f"/v2/models/{MODEL}", None),
    "GET model ready": ("GET", f"/v2/models/{MODEL}/ready", None),
    "GET config": ("GET", f"/v2/models/{MODEL}/config", None),
    "GET stats": ("GET", f"/v2/models/{MODEL}/stats", None),
    "POST infer": ("POST", f"/v2/models/{MODEL}/infer", json.dumps({"inputs": [{
        "name": "image", "datatype": "UINT8", "shape": [1, 1, 28, 28],
        "data": [0] * 784}]}).encode()),
    "POST index": ("POST", "/v2/repository/index", b""),
    "POST unload": ("POST", f"/v2/repository/models/{MODEL}/unload", b""),
    "POST load": ("POST", f"/v2/repository/models/{MODEL}/load", b""),
    "GET openapi": ("GET", "/openapi.json", None),
    "GET page": ("GET", "/", None),
}


def http_status(port: int, route: str, token: str | None) -> int:
    method, path, body = HTTP_ROUTES[route]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                     headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


OPEN_GRPC = {"Health"}
ADMIN_GRPC = {"RepositoryModelUnload", "RepositoryModelLoad"}
OPEN_HTTP = {"GET live", "GET ready", "GET openapi", "GET page"}
ADMIN_HTTP = {"POST unload", "POST load"}


@pytest.mark.parametrize("who, token", [("nobody", None), ("inference", INFERENCE),
                                        ("admin", ADMIN)])
def test_every_rpc_needs_its_role(server, who, token):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        got = {name: grpc_status(call, token) for name, call in grpc_calls(channel).items()}
    expected = {name: ("OK" if name in OPEN_GRPC or who == "admin" else
                       "UNAUTHENTICATED" if who == "nobody" else
                       "PERMISSION_DENIED" if name in ADMIN_GRPC else "OK")
                for name in got}
    assert got == expected


@pytest.mark.parametrize("who, token", [("nobody", None), ("inference", INFERENCE),
                                        ("admin", ADMIN)])
def test_every_route_needs_its_role(server, who, token):
    got = {route: http_status(server.http_port, route, token) for route in HTTP_ROUTES}
    expected = {route: (200 if route in OPEN_HTTP or who == "admin" else
                        401 if who == "nobody" else 403 if route in ADMIN_HTTP else 200)
                for route in got}
    assert got == expected


def test_the_refusals_name_the_role_and_the_log_names_who_changed_what(server, caplog):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        unload = grpc_calls(channel)["RepositoryModelUnload"]
        with pytest.raises(grpc.RpcError) as refused:
            unload((("authorization", f"Bearer {INFERENCE}"),))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "admin token" in refused.value.details() and "'reader'" in refused.value.details()
        with caplog.at_level("INFO"):
            unload((("authorization", f"Bearer {ADMIN}"),))
            grpc_calls(channel)["RepositoryModelLoad"]((("authorization", f"Bearer {ADMIN}"),))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "unload requested by operator from" in text and f"unloaded {MODEL}" in text
    assert ADMIN not in text and INFERENCE not in text  # labels, never the tokens


def test_with_the_repository_api_off_even_an_admin_is_refused(models_dir, tmp_path_factory,
                                                              tokens):  # noqa: F811
    srv = serve(models_dir, tmp_path_factory, tokens, repository_api=False)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            calls = grpc_calls(channel)
            with pytest.raises(grpc.RpcError) as refused:
                calls["RepositoryModelUnload"]((("authorization", f"Bearer {ADMIN}"),))
            assert grpc_status(calls["RepositoryIndex"], INFERENCE) == "OK"
        http = http_status(srv.http_port, "POST unload", ADMIN)
    finally:
        srv.stop(0)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "--repository-api on" in refused.value.details()
    assert http == 403


def test_the_command_line_takes_both_token_files_and_the_repository_api(models_dir, tokens,
                                                                        tmp_path):  # noqa: F811
    """`python -m server --auth-token-file F --admin-token-file G --repository-api on`: the
    reader may classify but not unload; the operator may unload, and the log says who did."""
    shutil.copytree(models_dir, tmp_path / "models")
    with ServerProcess("--models-dir", str(tmp_path / "models"), "--port", "0", "--device", "cpu",
                       "--auth-token-file", str(tokens / "inference"),
                       "--admin-token-file", str(tokens / "admin"),
                       "--repository-api", "on") as server:
        port = server.wait_for_port()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            calls = grpc_calls(channel)
            assert grpc_status(calls["Classify"], INFERENCE) == "OK"
            assert grpc_status(calls["RepositoryModelUnload"], INFERENCE) == "PERMISSION_DENIED"
            assert grpc_status(calls["RepositoryModelUnload"], ADMIN) == "OK"
        server.wait_for_log(f"unloaded {MODEL} (versions [1]) on request by operator from")
    assert "token file" in server.log and ADMIN not in server.log
