"""What an operator meets, through `python -m server` itself: live reload from the command line,
folders that are unreadable, oddly named, half-written or unverifiable, an empty or missing
models folder, ports already taken, and v2 errors in the metrics. Each test starts the real
entry point as a process and looks only at what it logs, answers and serves."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

import grpc
import onnx
import pytest
from fmnist.v1 import classifier_pb2 as pb
from fmnist.v1 import classifier_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inference import grpc_service_pb2 as v2
from inference import grpc_service_pb2_grpc as v2_grpc
from onnx import numpy_helper

import model_contract
from harness.process import ServerProcess, by_labels, scrape
from tests.serving_fixtures import SAMPLES, models_dir  # noqa: F401 - fixture

AS_NOBODY = ("tests/server/as_user.py",)
CPU = ("--port", "0", "--device", "cpu")
REPOSITORY_API = ("--repository-api", "on")  # load on request (no token files: anyone may)


@pytest.fixture
def root(models_dir):  # noqa: F811
    """A private, world-readable copy of the session's models (lenet, lenet_bn at v1)."""
    folder = Path(tempfile.mkdtemp(prefix="operator-", dir="/tmp"))
    shutil.copytree(models_dir, folder / "models")
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if path.is_dir() else 0))
    yield folder / "models"
    for path in folder.rglob("*"):  # what a test made unreadable must be removable
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(folder)


def stub(port: int) -> pb_grpc.ClassifierStub:
    return pb_grpc.ClassifierStub(grpc.insecure_channel(f"127.0.0.1:{port}"))


def v2_stub(port: int) -> v2_grpc.GRPCInferenceServiceStub:
    return v2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))


def served(port: int) -> list[tuple[str, int]]:
    return [(m.name, m.version) for m in stub(port).ListModels(pb.ListModelsRequest(),
                                                               timeout=30).models]


def classify(port: int, model: str = "lenet_bn") -> pb.ClassifyResponse:
    image = pb.Image(encoded=(SAMPLES / "bag.png").read_bytes())
    return stub(port).Classify(pb.ClassifyRequest(model=model, images=[image]), timeout=30)


def health(port: int, service: str = "") -> int:
    return health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}")).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=30).status


def load(port: int, model: str) -> grpc.RpcError | None:
    """v2 RepositoryModelLoad; the error, or None when it answered OK."""
    try:
        v2_stub(port).RepositoryModelLoad(v2.RepositoryModelLoadRequest(model_name=model),
                                          timeout=120)
    except grpc.RpcError as e:
        return e
    return None


# --- 1. live reload -------------------------------------------------------------------------------

def test_poll_seconds_serves_a_copied_version_and_keep_versions_1_unloads_the_old(root):
    with ServerProcess("--models-dir", str(root), *CPU, "--poll-seconds", "0.2") as server:
        port = server.wait_for_port()
        assert classify(port).version == 1
        shutil.copytree(root / "lenet_bn" / "1", root / "lenet_bn" / "2")  # as `cp -r` does
        server.wait_for_log("now serving lenet_bn v2")
        server.wait_for_log("unloaded lenet_bn v1 (--keep-versions 1)")
        assert classify(port).version == 2
        assert ("lenet_bn", 1) not in served(port)


def test_keep_versions_2_holds_for_repository_model_load_without_polling(root):
    with ServerProcess("--models-dir", str(root), *CPU, "--poll-seconds", "0", *REPOSITORY_API,
                       "--keep-versions", "2") as server:
        port = server.wait_for_port()
        server.wait_for_log("not watching")
        versions = lambda: [v for name, v in served(port) if name == "lenet_bn"]  # noqa: E731
        shutil.copytree(root / "lenet_bn" / "1", root / "lenet_bn" / "2")
        assert versions() == [1]  # nothing polls: only a load brings it in
        assert load(port, "lenet_bn") is None
        assert versions() == [1, 2]
        shutil.copytree(root / "lenet_bn" / "1", root / "lenet_bn" / "3")
        assert load(port, "lenet_bn") is None
        assert versions() == [2, 3]
        assert "unloaded lenet_bn v1 (--keep-versions 2)" in server.log


# --- 2. an unreadable folder ------------------------------------------------------------------------

def test_an_unreadable_version_folder_refuses_that_model_and_serves_the_rest(root):
    (root / "lenet" / "1").chmod(0)
    with ServerProcess("--models-dir", str(root), *CPU, *REPOSITORY_API,
                       entry=AS_NOBODY) as server:
        port = server.wait_for_port()  # a restart with the folder unreadable: no traceback
        assert served(port) == [("lenet_bn", 1)]
        refused = stub(port).ListModels(pb.ListModelsRequest(), timeout=30).refused
        assert [(r.name, r.version) for r in refused] == [("lenet", 1)]
        assert "Permission denied" in refused[0].reason
        assert load(port, "lenet_bn") is None  # other models load on demand as before
        error = load(port, "lenet")
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
        assert "v1 was not loaded" in error.details() and "Permission denied" in error.details()
        assert classify(port).version == 1  # and it classifies, as nobody
    assert "Traceback" not in server.log


# --- 3. names the server cannot serve ----------------------------------------------------------------

def test_folder_names_that_cannot_be_served_are_ignored_with_one_escaped_line(root):
    odd = [os.fsdecode(b"bad\xffname"), "forged\n2026-01-01 00:00:00 INFO server: hello", "n" * 200]
    for name in odd:
        shutil.copytree(root / "lenet_bn", root / name)
    with ServerProcess("--models-dir", str(root), *CPU, "--metrics-port", "0",
                       metrics=True) as server:
        port = server.wait_for_port()
        assert served(port) == [("lenet", 1), ("lenet_bn", 1)]
        index = v2_stub(port).RepositoryIndex(v2.RepositoryIndexRequest(), timeout=30)
        assert sorted(m.name for m in index.models) == ["lenet", "lenet_bn"]
        assert health(port) == health_pb2.HealthCheckResponse.SERVING
    ignored = [line for line in server.lines if "ignored in" in line]
    assert len(ignored) == 1, server.log
    for shown in ("'bad\\udcffname'", "'forged\\n2026", "(a model name: not UTF-8)",
                  "(a model name: control characters)", "(a model name: 200 bytes, over 128)"):
        assert shown in ignored[0]
    assert not any(line.startswith("2026-01-01 00:00:00 INFO server: hello") for line in server.lines)


def test_metrics_keep_working_beside_a_folder_name_that_is_not_utf8(root):
    shutil.copytree(root / "lenet_bn", root / os.fsdecode(b"\xfe\xff"))
    with ServerProcess("--models-dir", str(root), *CPU, metrics=True) as server:
        port = server.wait_for_port()
        classify(port)
        ready = by_labels(scrape(server.metrics_port), "fmnist_model_ready", "model", "version")
        assert ready == {("lenet", "1"): 1.0, ("lenet_bn", "1"): 1.0}


# --- 4. a model without its probe ----------------------------------------------------------------------

def negated_without_probe(path: Path) -> None:
    """The file with its last layer's weights negated and its probe removed: it answers wrong,
    and nothing in it says so."""
    model = onnx.load(str(path))
    last = [t for t in model.graph.initializer if len(t.dims) == 2][-1]
    last.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(last), last.name))
    kept = [p for p in model.metadata_props if p.key != "fmnist.probe"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(path))


def test_a_file_without_its_probe_is_refused_unless_allowed_and_then_listed_unverified(root):
    negated_without_probe(root / "lenet_bn" / "1" / "model.onnx")
    with ServerProcess("--models-dir", str(root), *CPU) as server:
        port = server.wait_for_port()
        assert served(port) == [("lenet", 1)]
        [refusal] = stub(port).ListModels(pb.ListModelsRequest(), timeout=30).refused
        assert refusal.name == "lenet_bn" and "--allow-unverified" in refusal.reason
    with ServerProcess("--models-dir", str(root), *CPU, "--allow-unverified") as server:
        port = server.wait_for_port()
        listed = {m.name: m for m in stub(port).ListModels(pb.ListModelsRequest(),
                                                           timeout=30).models}
        assert not listed["lenet_bn"].HasField("probe_max_abs_diff")  # unverified
        assert listed["lenet"].HasField("probe_max_abs_diff")
    line = next(line for line in server.lines if "loaded model lenet_bn" in line)
    assert "NOT verified" in line and "probe max" not in line


# --- 5. RepositoryModelLoad of a version that was refused -----------------------------------------------

def truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:4096])  # a copy that stopped half-way


def tampered_probe(path: Path) -> None:
    model = onnx.load(str(path))
    for p in model.metadata_props:
        if p.key == "fmnist.probe":
            probe = model_contract.decode_probe(p.value)
            probe.probabilities[0] = probe.probabilities[0][::-1]  # the exporter never saw these
            p.value = model_contract.encode_probe(probe.images, probe.probabilities)
    onnx.save(model, str(path))


def other_input(path: Path) -> None:
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    onnx.save(model, str(path))


@pytest.mark.parametrize("damage, reason", [(truncated, "onnxruntime cannot load it"),
                                            (tampered_probe, "probe"),
                                            (other_input, "input")])
def test_repository_model_load_fails_with_the_reason_when_the_newest_version_is_refused(
        root, damage, reason):
    with ServerProcess("--models-dir", str(root), *CPU, "--poll-seconds", "0",
                       *REPOSITORY_API) as server:
        port = server.wait_for_port()
        shutil.copytree(root / "lenet_bn" / "1", root / "lenet_bn" / "2")
        damage(root / "lenet_bn" / "2" / "model.onnx")
        error = load(port, "lenet_bn")
        assert error is not None and error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "'lenet_bn' v2 was not loaded" in error.details() and reason in error.details()
        assert "v1 keeps serving" in error.details() and classify(port).version == 1


# --- 6. a missing or empty models folder ------------------------------------------------------------------

def test_a_missing_models_folder_exits_1_and_says_so(tmp_path):
    with ServerProcess("--models-dir", str(tmp_path / "typo"), *CPU) as server:
        assert server.wait(60) == 1
    assert "cannot start: --models-dir" in server.log and "typo does not exist" in server.log
    assert "listening" not in server.log


def test_an_empty_models_folder_exits_1_unless_allow_empty_then_waits_not_serving(root, tmp_path):
    empty = tmp_path / "models"
    empty.mkdir()
    with ServerProcess("--models-dir", str(empty), *CPU) as server:
        assert server.wait(60) == 1
    assert "no model in" in server.log and "--allow-empty" in server.log
    with ServerProcess("--models-dir", str(empty), *CPU, "--allow-empty",
                       "--poll-seconds", "0.2") as server:
        port = server.wait_for_port()
        assert health(port) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert health(port, "fmnist.v1.Classifier") == health_pb2.HealthCheckResponse.NOT_SERVING
        shutil.copytree(root / "lenet_bn", empty / "lenet_bn")
        server.wait_for_log("now serving lenet_bn v1")
        assert health(port) == health_pb2.HealthCheckResponse.SERVING
        assert classify(port).model == "lenet_bn"


# --- 7. ports already taken --------------------------------------------------------------------------------

def listening_socket(host: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    s.listen()
    return s


def test_localhost_with_127_0_0_1_taken_is_a_start_up_error_before_any_model_loads(root):
    with listening_socket() as taken:
        port = taken.getsockname()[1]
        with ServerProcess("--models-dir", str(root), "--host", "localhost", "--port", str(port),
                           "--device", "cpu") as server:
            assert server.wait(60) == 1
    assert f"cannot serve gRPC on 127.0.0.1:{port}: Address already in use (--port" in server.log
    assert "loaded model" not in server.log  # found before the models load


def test_a_taken_metrics_port_is_a_start_up_error_before_any_model_loads(root):
    with listening_socket() as taken:
        port = taken.getsockname()[1]
        with ServerProcess("--models-dir", str(root), *CPU, "--metrics-port", str(port)) as server:
            assert server.wait(60) == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in server.log
    assert "loaded model" not in server.log


# --- 8. KServe v2 errors are counted ---------------------------------------------------------------------------

def test_v2_not_found_and_bad_shapes_are_counted_like_every_request(root):
    with ServerProcess("--models-dir", str(root), *CPU, metrics=True) as server:
        port = server.wait_for_port()
        calls = {"NOT_FOUND": v2.ModelInferRequest(model_name="no-such-model", inputs=[
                     v2.ModelInferRequest.InferInputTensor(name="image", datatype="UINT8",
                                                           shape=[1, 1, 28, 28])],
                     raw_input_contents=[bytes(784)]),
                 "INVALID_ARGUMENT": v2.ModelInferRequest(model_name="lenet_bn", inputs=[
                     v2.ModelInferRequest.InferInputTensor(name="image", datatype="UINT8",
                                                           shape=[1, 28, 28])],
                     raw_input_contents=[bytes(784)])}
        for code, request in calls.items():
            with pytest.raises(grpc.RpcError) as e:
                v2_stub(port).ModelInfer(request, timeout=30)
            assert e.value.code().name == code
        counted = by_labels(scrape(server.metrics_port), "fmnist_requests_total", "model",
                            "version", "protocol", "code")
    assert counted[("", "", "v2", "NOT_FOUND")] == 1
    assert counted[("lenet_bn", "1", "v2", "INVALID_ARGUMENT")] == 1
