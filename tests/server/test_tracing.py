"""OpenTelemetry tracing through `python -m server` as an operator turns it on (the OTEL_*
variables), into a real OTLP receiver (tests/server/collector.py) through the real exporters:
gRPC and HTTP/protobuf. Parentage from a caller's traceparent on every protocol, the spans of a
request's steps, each batch span linked to exactly the requests it served, attributes, error
status, sampling by the SDK's variables, one service with a worker attribute under --workers, a
collector that cannot be reached, and no OpenTelemetry at all when tracing is off."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from fmnist.v1 import classifier_pb2 as pb
from fmnist.v1 import classifier_pb2_grpc as pb_grpc
from inference import grpc_service_pb2 as v2
from inference import grpc_service_pb2_grpc as v2_grpc

from harness.process import ServerProcess, free_port
from tests.server.collector import KIND_SERVER, STATUS_ERROR, GrpcCollector, HttpCollector
from tests.serving_fixtures import REPO, models_dir  # noqa: F401 - fixture

RAW = pb.Image(raw=bytes(range(256)) * 3 + bytes(16))
PNG = (REPO / "samples" / "coat.png").read_bytes()
CPU = ("--port", "0", "--device", "cpu")


def traceparent(n: int) -> tuple[str, str, str]:
    """(header value, its trace id, its parent span id): one made-up caller span per test."""
    trace_id, span_id = f"{n:032x}", f"{n + 0xabc:016x}"
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def of_trace(spans, trace_id: str):
    return [s for s in spans if s.trace_id == trace_id]


def children(spans, parent) -> dict[str, list]:
    out: dict[str, list] = {}
    for s in spans:
        if s.parent_id == parent.span_id and s.trace_id == parent.trace_id:
            out.setdefault(s.name, []).append(s)
    return out


def batches_linking(spans, request) -> list:
    return [s for s in spans if s.name == "batch"
            and (request.trace_id, request.span_id) in s.links]


@pytest.fixture(scope="module")
def grpc_traced(models_dir):  # noqa: F811
    """A server tracing to an OTLP/gRPC collector: (server, collector, gRPC port)."""
    with GrpcCollector() as collector, ServerProcess(
            "--models-dir", str(models_dir), *CPU, "--log-format", "json", "--max-batch", "32",
            env=collector.environment(OTEL_SERVICE_NAME="fmnist-test")) as server:
        yield server, collector, server.wait_for_port()


def test_a_classify_is_a_child_of_the_callers_span_with_its_steps(grpc_traced):
    server, collector, port = grpc_traced
    header, trace_id, parent = traceparent(1)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        _, call = pb_grpc.ClassifierStub(channel).Classify.with_call(
            pb.ClassifyRequest(model="lenet_bn", images=[pb.Image(encoded=PNG)]), timeout=30,
            metadata=[("traceparent", header), ("x-request-id", "trace-test-1")])
    assert ("x-request-id", "trace-test-1") in tuple(call.trailing_metadata())
    spans = collector.wait_for(lambda spans: any(
        s.trace_id == trace_id and s.name == "fmnist.v1 classify" for s in spans)
        and any(s.name == "batch" and any(link[0] == trace_id for link in s.links)
                for s in spans))
    request, = [s for s in of_trace(spans, trace_id) if s.name == "fmnist.v1 classify"]
    assert request.parent_id == parent and request.kind == KIND_SERVER
    assert request.attributes == {"fmnist.protocol": "fmnist.v1",
                                  "fmnist.request_id": "trace-test-1",
                                  "fmnist.model": "lenet_bn", "fmnist.version": 1,
                                  "fmnist.images": 1, "fmnist.status": "OK"}
    assert request.resource["service.name"] == "fmnist-test"  # OTEL_SERVICE_NAME, read by the SDK
    steps = children(spans, request)
    assert sorted(steps) == ["decode", "queue", "read"] and all(len(v) == 1 for v in steps.values())
    read, decode, queue = steps["read"][0], steps["decode"][0], steps["queue"][0]
    assert request.start == read.start <= read.end <= decode.start <= decode.end <= queue.start
    batch, = batches_linking(spans, request)
    assert batch.parent_id == "" and batch.trace_id != trace_id  # its own trace, linked
    assert queue.end == batch.start and batch.end <= request.end
    assert batch.attributes == {"fmnist.model": "lenet_bn", "fmnist.version": 1,
                                "fmnist.provider": "CPUExecutionProvider", "fmnist.size": 1,
                                "fmnist.padded": 1, "fmnist.padding": 0, "fmnist.requests": 1}


def test_each_batch_links_exactly_the_requests_it_served(grpc_traced):
    server, collector, port = grpc_traced
    header, trace_id, _ = traceparent(2)
    sizes = [1] * 24 + [40]  # 40 images: more than --max-batch 32, so two batches serve it
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}",
                                      options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(4)]
    try:
        stubs = [pb_grpc.ClassifierStub(c) for c in channels]
        calls = [stubs[i % 4].Classify.future(
            pb.ClassifyRequest(model="lenet", images=[RAW] * n), timeout=60,
            metadata=[("traceparent", header), ("x-request-id", f"links-{i}")])
            for i, n in enumerate(sizes)]
        assert all(c.result().classifications for c in calls)
    finally:
        for c in channels:
            c.close()
    spans = collector.wait_for(lambda spans: len(
        [s for s in of_trace(spans, trace_id) if s.name == "queue"]) >= len(sizes) + 1)
    requests = {s.span_id: s for s in of_trace(spans, trace_id) if s.name == "fmnist.v1 classify"}
    assert len(requests) == len(sizes)
    batches = [s for s in spans if s.name == "batch"
               and any(link[0] == trace_id for link in s.links)]
    for batch in batches:
        linked = [requests[span_id] for tid, span_id in batch.links]  # only requests: KeyError
        assert all(tid == trace_id for tid, _ in batch.links)
        assert batch.attributes["fmnist.requests"] == len(linked) == len(set(batch.links))
        # exactly the requests whose pieces waited for this batch: their queue spans end as it
        # starts, and its images are theirs
        served = {q.parent_id for q in of_trace(spans, trace_id)
                  if q.name == "queue" and q.end == batch.start}
        assert served == {r.span_id for r in linked}
        assert batch.attributes["fmnist.size"] <= 32
    linked_by = Counter(span_id for b in batches for _, span_id in b.links)
    big, = [r for r in requests.values() if r.attributes["fmnist.images"] == 40]
    assert linked_by[big.span_id] == 2 and len(children(spans, big)["queue"]) == 2
    assert all(linked_by[r.span_id] == 1 for r in requests.values() if r is not big)
    assert sum(b.attributes["fmnist.size"] for b in batches) == sum(sizes)


def test_errors_are_recorded_with_their_status(grpc_traced):
    server, collector, port = grpc_traced
    header, trace_id, _ = traceparent(3)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ClassifierStub(channel)
        for request in (pb.ClassifyRequest(model="nope", images=[RAW]),
                        pb.ClassifyRequest(model="lenet_bn", images=[pb.Image(encoded=b"\x89PNGx")])):
            with pytest.raises(grpc.RpcError):
                stub.Classify(request, timeout=30, metadata=[("traceparent", header)])
    spans = collector.wait_for(lambda spans: len(
        [s for s in of_trace(spans, trace_id) if s.name == "fmnist.v1 classify"]) == 2)
    by_status = {s.attributes["fmnist.status"]: s for s in of_trace(spans, trace_id)
                 if s.name == "fmnist.v1 classify"}
    missing, bad = by_status["NOT_FOUND"], by_status["INVALID_ARGUMENT"]
    assert missing.status == STATUS_ERROR and missing.status_message.startswith(
        "NOT_FOUND: model 'nope' is not served")
    assert "fmnist.model" not in missing.attributes  # no served version was chosen
    assert bad.status == STATUS_ERROR and bad.status_message.startswith("INVALID_ARGUMENT: image 0")
    decode, = children(spans, bad)["decode"]
    assert decode.status == STATUS_ERROR and "InvalidImage" in decode.status_message
    # the error's log line carries the request id and the trace id (--log-format json)
    line = next(json.loads(line) for line in server.lines
                if "-> NOT_FOUND" in line and trace_id in line)
    assert line["trace_id"] == trace_id and len(line["request_id"]) == 32


def test_kserve_v2_over_grpc_continues_the_callers_trace(grpc_traced):
    server, collector, port = grpc_traced
    header, trace_id, parent = traceparent(4)
    request = v2.ModelInferRequest(model_name="lenet_bn")
    request.inputs.add(name="image", datatype="UINT8", shape=[2, 1, 28, 28])
    request.raw_input_contents.append(np.zeros((2, 1, 28, 28), np.uint8).tobytes())
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        _, call = v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer.with_call(
            request, timeout=30, metadata=[("traceparent", header)])
    assert dict(call.trailing_metadata())["x-request-id"]  # made up: the caller sent none
    spans = collector.wait_for(lambda spans: any(
        s.trace_id == trace_id and s.name == "v2 infer" for s in spans))
    infer, = [s for s in of_trace(spans, trace_id) if s.name == "v2 infer"]
    assert infer.parent_id == parent and infer.attributes["fmnist.images"] == 2
    assert infer.attributes["fmnist.request_id"] == dict(call.trailing_metadata())["x-request-id"]
    assert sorted(children(spans, infer)) == ["input", "queue", "read"]


def http(port: int, path: str, body: bytes, headers: dict) -> tuple[dict, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", body, headers)
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read()), dict(answer.headers)


def test_http_requests_export_over_otlp_http_protobuf(models_dir):  # noqa: F811
    header, trace_id, parent = traceparent(5)
    with HttpCollector() as collector, ServerProcess(
            "--models-dir", str(models_dir), *CPU, http=True,
            env=collector.environment()) as server:
        server.wait_for_port()
        answer, headers = http(server.http_port, "/v1/models/lenet_bn:classify", PNG,
                               {"Content-Type": "image/png", "traceparent": header,
                                "X-Request-Id": "http-1"})
        assert answer["classifications"] and headers["X-Request-Id"] == "http-1"
        body = json.dumps({"inputs": [{"name": "image", "datatype": "UINT8",
                                       "shape": [1, 1, 28, 28], "data": [0] * 784}]}).encode()
        _, headers = http(server.http_port, "/v2/models/lenet_bn/infer", body,
                          {"Content-Type": "application/json", "traceparent": header})
        assert len(headers["X-Request-Id"]) == 32
        spans = collector.wait_for(lambda spans: {"http classify", "http infer"} <= {
            s.name for s in of_trace(spans, trace_id)})
    classify, = [s for s in of_trace(spans, trace_id) if s.name == "http classify"]
    infer, = [s for s in of_trace(spans, trace_id) if s.name == "http infer"]
    assert classify.parent_id == infer.parent_id == parent
    assert classify.attributes["fmnist.request_id"] == "http-1"
    assert classify.attributes["fmnist.protocol"] == infer.attributes["fmnist.protocol"] == "http"
    assert sorted(children(spans, classify)) == ["decode", "queue", "read"]
    assert sorted(children(spans, infer)) == ["input", "parse", "queue", "read"]
    read, parse = children(spans, infer)["read"][0], children(spans, infer)["parse"][0]
    assert infer.start <= read.start <= read.end <= parse.start <= parse.end <= infer.end
    assert batches_linking(spans, classify) and batches_linking(spans, infer)


def test_the_sdk_variables_choose_the_sampling(models_dir):  # noqa: F811
    """parentbased_traceidratio at 0: a request that starts its own trace is not sampled (and
    no batch span is made for it), one whose caller sampled is, with its batch."""
    header, trace_id, _ = traceparent(6)
    with GrpcCollector() as collector, ServerProcess(
            "--models-dir", str(models_dir), *CPU, env=collector.environment(
                OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0")
    ) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.wait_for_port()}") as channel:
            stub = pb_grpc.ClassifierStub(channel)
            for _ in range(5):
                stub.Classify(pb.ClassifyRequest(model="lenet", images=[RAW]), timeout=30)
            stub.Classify(pb.ClassifyRequest(model="lenet_bn", images=[RAW]), timeout=30,
                          metadata=[("traceparent", header)])
        spans = collector.wait_for(lambda spans: any(s.name == "batch" for s in spans))
        server.proc.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0  # its last spans are flushed as it stops
    assert {s.trace_id for s in collector.spans if s.name != "batch"} == {trace_id}
    batch, = collector.named("batch")
    assert batch.attributes["fmnist.model"] == "lenet_bn" and batch.links[0][0] == trace_id


def test_workers_export_under_one_service_with_their_slot(models_dir):  # noqa: F811
    with GrpcCollector() as collector, ServerProcess(
            "--models-dir", str(models_dir), *CPU, "--workers", "2",
            env=collector.environment()) as server:
        port = server.wait_for_port()
        for _ in range(16):  # fresh connections: the kernel spreads them over the workers
            with grpc.insecure_channel(f"127.0.0.1:{port}",
                                       options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                pb_grpc.ClassifierStub(channel).Classify(
                    pb.ClassifyRequest(model="lenet", images=[RAW]), timeout=30)
        spans = collector.wait_for(lambda spans: len(
            [s for s in spans if s.name == "fmnist.v1 classify"]) == 16)
    requests = [s for s in spans if s.name == "fmnist.v1 classify"]
    assert {s.resource["service.name"] for s in spans} == {"fmnist-serve"}
    assert {s.resource["fmnist.worker"] for s in requests} == {0, 1}
    assert len({s.resource["process.pid"] for s in requests}) == 2


def test_an_unreachable_collector_costs_a_warning_not_requests(models_dir):  # noqa: F811
    nobody = free_port()
    with ServerProcess("--models-dir", str(models_dir), *CPU, "--grace", "2",
                       "--otlp-endpoint", f"http://127.0.0.1:{nobody}",
                       env={"OTEL_BSP_SCHEDULE_DELAY": "50"}) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.wait_for_port()}") as channel:
            stub = pb_grpc.ClassifierStub(channel)
            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(lambda _: stub.Classify(
                    pb.ClassifyRequest(model="lenet", images=[RAW]), timeout=30), range(200)))
        assert all(a.classifications for a in answers)
        server.wait_for_log(f"127.0.0.1:{nobody}", times=2)  # "tracing on: ..." and a warning
        server.proc.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
    warnings = [line for line in server.lines if "WARNING" in line and "export" in line.lower()]
    assert 1 <= len(warnings) <= 3, warnings  # throttled: not one per try of every export


SYS_MODULES = """
import json, sys
sys.argv = ["server"]
from server.cli import get_args_parser, server_config
from server.app import create_server
import grpc
from fmnist.v1 import classifier_pb2 as pb, classifier_pb2_grpc as pb_grpc
args = get_args_parser().parse_args(["--models-dir", sys.argv_models, "--port", "0",
                                     "--http-port", "0", "--metrics-port", "0", "--device", "cpu"])
server, port = create_server(args.models_dir, config=server_config(args))
server.start()
with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    pb_grpc.ClassifierStub(channel).Classify(pb.ClassifyRequest(model="lenet", images=[
        pb.Image(raw=bytes(784))]), timeout=30)
server.stop(0)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")))
"""


@pytest.mark.parametrize("tracing", ["off", "on"])
def test_with_tracing_off_no_opentelemetry_module_is_imported(models_dir, tracing):  # noqa: F811
    """The server as its command line builds it, serving a request; "on" shows the check sees
    OpenTelemetry when it is there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if tracing == "on":
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}",
                   OTEL_BSP_SCHEDULE_DELAY="60000")
    script = SYS_MODULES.replace("sys.argv_models", repr(str(models_dir)))
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    imported = json.loads(out.stdout.splitlines()[-1])
    assert (imported == []) == (tracing == "off"), imported
