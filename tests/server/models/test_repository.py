"""The live model repository on a real server: versions come and go under load, with no error."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import grpc
import pytest
from fmnist.v1 import classifier_pb2 as pb
from fmnist.v1 import classifier_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.wait import until
from server.app import create_server
from tests.serving_fixtures import SAMPLES, models_dir  # noqa: F401 - fixture

WAIT = 60.0  # seconds a state of the live repository (a version loaded, unloaded, ...) may take


def publish(source: Path, target: Path) -> None:
    """As the exporter does: write under a hidden name, then rename into place."""
    hidden = target.parent / f".{target.name}.tmp"
    shutil.copytree(source, hidden)
    os.rename(hidden, target)


class Load:
    """Classify calls back to back on a thread; every answer's version or error code kept."""

    def __init__(self, stub, model: str):
        self.request = pb.ClassifyRequest(model=model, images=[
            pb.Image(encoded=(SAMPLES / "bag.png").read_bytes())])
        self.stub = stub
        self.versions: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.versions.append(self.stub.Classify(self.request, timeout=30).version)
            except grpc.RpcError as e:
                self.errors.append(f"{e.code().name}: {e.details()}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.slow
def test_versions_swap_under_load_without_a_failed_request(models_dir, tmp_path):  # noqa: F811
    root = tmp_path / "models"
    publish(models_dir / "lenet_bn" / "1", root / "lenet_bn" / "1")
    srv, port = create_server(root, port=0, device="cpu", poll_seconds=0.1, keep_versions=1)
    srv.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.ClassifierStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    served = lambda: [(m.name, m.version) for m in stub.ListModels(  # noqa: E731
        pb.ListModelsRequest(), timeout=10).models]
    load = Load(stub, "lenet_bn")
    try:
        until(lambda: len(load.versions) > 20, WAIT, "traffic")
        publish(models_dir / "lenet_bn" / "1", root / "lenet_bn" / "2")  # a new version appears
        until(lambda: load.versions[-1] == 2, WAIT, "answers from version 2")
        until(lambda: served() == [("lenet_bn", 2)], WAIT,
              "version 1 unloaded (--keep-versions 1)")

        broken = root / "lenet_bn" / ".3.tmp"
        broken.mkdir()
        (broken / "model.onnx").write_bytes(b"not an onnx file")
        os.rename(broken, root / "lenet_bn" / "3")  # a version that cannot load
        until(lambda: any(r.version == 3 for r in stub.ListModels(
            pb.ListModelsRequest(), timeout=10).refused), WAIT, "version 3 refused")
        assert served() == [("lenet_bn", 2)]  # the previous version keeps serving

        publish(models_dir / "lenet", root / "lenet")  # a new model: health follows
        until(lambda: ("lenet", 1) in served(), WAIT, "the new model")
        status = health.Check(health_pb2.HealthCheckRequest(
            service="fmnist.v1.Classifier/lenet"), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING

        shutil.rmtree(root / "lenet_bn" / "2")  # removed: drained, unloaded; v1 comes back
        until(lambda: ("lenet_bn", 1) in served() and ("lenet_bn", 2) not in served(),
              WAIT, "version 2 unloaded and version 1 served again")
        n = len(load.versions)
        until(lambda: len(load.versions) > n + 10, WAIT, "more traffic")
    finally:
        load.stop()
        channel.close()
        srv.stop(0)
    assert load.errors == []
    assert set(load.versions) == {1, 2} and load.versions[-1] == 1


def test_load_and_unload_on_demand(models_dir, tmp_path):  # noqa: F811
    root = tmp_path / "models"
    publish(models_dir / "lenet", root / "lenet")
    srv, port = create_server(root, port=0, device="cpu")  # no polling
    srv.start()
    try:
        control, served = srv.control, srv.core.served
        control.unload("lenet")
        assert served.versions("lenet") == []
        control.poll()
        assert served.versions("lenet") == []  # unloaded on demand: polling leaves it alone
        control.load("lenet")
        assert served.versions("lenet") == [1]
        with pytest.raises(Exception, match="no model 'nope'"):
            control.load("nope")
    finally:
        srv.stop(0)
