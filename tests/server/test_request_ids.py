"""Request ids: every answer of fmnist.v1, KServe v2 and HTTP carries one (gRPC trailing metadata
`x-request-id`, HTTP `X-Request-Id`), the caller's when it sent a usable one, else made up; the
error lines of the log carry it (as a JSON field, or a suffix of a text line)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import grpc
import pytest
from fmnist.v1 import classifier_pb2 as pb
from fmnist.v1 import classifier_pb2_grpc as pb_grpc
from inference import grpc_service_pb2 as v2
from inference import grpc_service_pb2_grpc as v2_grpc

from harness.process import ServerProcess
from server.app import create_server
from tests.server.fakes import fake_model
from tests.serving_fixtures import models_dir  # noqa: F401 - fixture

RAW = pb.Image(raw=bytes(784))
MADE_UP = re.compile(r"[0-9a-f]{32}")
TOO_LONG = "x" * 129


@pytest.fixture(scope="module")
def served():
    server, port = create_server(models=[fake_model("fake", 1)], port=0, http_port=0)
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield server, channel
    server.stop(0)


def trailing_id(call) -> str:
    ids = [value for key, value in call.trailing_metadata() if key == "x-request-id"]
    assert len(ids) == 1, call.trailing_metadata()
    return ids[0]


@pytest.mark.parametrize("sent, expected", [
    (None, MADE_UP), ("req-42", "req-42"), ("a.b:c/d+e=f@g_h-1", "a.b:c/d+e=f@g_h-1"),
    (TOO_LONG, MADE_UP), ("has space", MADE_UP), ("semi;colon", MADE_UP)])
def test_grpc_answers_carry_the_callers_id_or_a_new_one(served, sent, expected):
    _, channel = served
    metadata = [] if sent is None else [("x-request-id", sent)]
    _, call = pb_grpc.ClassifierStub(channel).Classify.with_call(
        pb.ClassifyRequest(model="fake", images=[RAW]), metadata=metadata, timeout=10)
    got = trailing_id(call)
    assert (got == expected) if isinstance(expected, str) else expected.fullmatch(got)


def test_grpc_errors_and_kserve_v2_carry_one_too(served):
    _, channel = served
    with pytest.raises(grpc.RpcError) as e:
        pb_grpc.ClassifierStub(channel).Classify(pb.ClassifyRequest(model="nope", images=[RAW]),
                                                 metadata=[("x-request-id", "missing-1")],
                                                 timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and trailing_id(e.value) == "missing-1"
    _, call = v2_grpc.GRPCInferenceServiceStub(channel).ServerLive.with_call(
        v2.ServerLiveRequest(), timeout=10)
    assert MADE_UP.fullmatch(trailing_id(call))
    first, second = (trailing_id(pb_grpc.ClassifierStub(channel).ListModels.with_call(
        pb.ListModelsRequest(), timeout=10)[1]) for _ in range(2))
    assert first != second  # one per request


def http_id(port: int, path: str, headers: dict) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.headers["X-Request-Id"]
    except urllib.error.HTTPError as e:
        return e.code, e.headers["X-Request-Id"]


def test_http_answers_carry_the_callers_id_or_a_new_one(served):
    server, _ = served
    port = server.http_port
    assert http_id(port, "/v2/health/ready", {"X-Request-Id": "probe-1"}) == (200, "probe-1")
    assert http_id(port, "/v2/models/nope", {"X-Request-Id": "lost-1"}) == (404, "lost-1")
    status, made_up = http_id(port, "/v1/models", {"X-Request-Id": TOO_LONG})
    assert status == 200 and MADE_UP.fullmatch(made_up)
    assert MADE_UP.fullmatch(http_id(port, "/no/such/route", {})[1])


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_error_log_lines_carry_the_request_id(models_dir, log_format):  # noqa: F811
    with ServerProcess("--models-dir", str(models_dir), "--port", "0", "--device", "cpu",
                       "--log-format", log_format) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.wait_for_port()}") as channel:
            with pytest.raises(grpc.RpcError):
                pb_grpc.ClassifierStub(channel).Classify(
                    pb.ClassifyRequest(model="nope", images=[RAW]), timeout=10,
                    metadata=[("x-request-id", "log-me-7")])
        server.wait_for_log("-> NOT_FOUND")
    line = next(line for line in server.lines if "-> NOT_FOUND" in line)
    if log_format == "json":
        record = json.loads(line)
        assert record["request_id"] == "log-me-7" and "trace_id" not in record  # tracing is off
    else:
        assert line.endswith(" [request_id=log-me-7]")
    starting = next(line for line in server.lines if "listening on" in line)
    assert "request_id" not in starting  # lines outside a request carry none
