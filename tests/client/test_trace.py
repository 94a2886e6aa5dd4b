"""`predict.py --trace`: the run starts a trace, every call carries its traceparent, the trace id
is printed, and the server's spans (a real `python -m server` exporting to a real OTLP receiver)
are found under it, children of the client's span."""

from __future__ import annotations

import json
import re

from harness.process import ServerProcess
from tests.client.predict_cli import predict
from tests.server.collector import GrpcCollector
from tests.serving_fixtures import SAMPLES, models_dir  # noqa: F401 - fixture


def test_trace_sends_a_traceparent_and_prints_its_trace_id(models_dir):  # noqa: F811
    with GrpcCollector() as collector, ServerProcess(
            "--models-dir", str(models_dir), "--port", "0", "--device", "cpu",
            env=collector.environment(OTEL_TRACES_SAMPLER="parentbased_traceidratio",
                                      OTEL_TRACES_SAMPLER_ARG="0")) as server:
        # the server samples none of its own: only a caller's sampled trace is recorded
        address = f"127.0.0.1:{server.wait_for_port()}"
        out = predict(str(SAMPLES / "coat.png"), str(SAMPLES / "bag.png"), "--server", address,
                      "--model", "lenet_bn", "--trace", "--json")
        assert out.returncode == 0, out.stderr
        trace_id = json.loads(out.stdout)["trace_id"]
        assert re.fullmatch(r"[0-9a-f]{32}", trace_id)
        assert out.stderr.strip() == f"trace {trace_id}"
        spans = collector.wait_for(lambda spans: any(
            s.trace_id == trace_id and s.name == "fmnist.v1 classify" for s in spans))
        untraced = predict(str(SAMPLES / "coat.png"), "--server", address, "--json")
        assert untraced.returncode == 0 and "trace_id" not in json.loads(untraced.stdout)
    request, = [s for s in spans if s.name == "fmnist.v1 classify"]
    assert request.trace_id == trace_id and re.fullmatch(r"[0-9a-f]{16}", request.parent_id)
    assert request.attributes["fmnist.images"] == 2
