"""Storage faults keep what is served (`python -m server` polling its models folder, run as user
nobody where root would read what a fault makes unreadable): a models folder moved away and back,
a serving file made unreadable, one truncated in place, a version still being copied in. Each
keeps every loaded version serving, with one log line (and one when it is over) and a metric,
and no churn of loads and unloads."""

from __future__ import annotations

import shutil
import stat
import tempfile
from pathlib import Path

import grpc
import pytest
from fmnist.v1 import classifier_pb2 as pb
from fmnist.v1 import classifier_pb2_grpc as pb_grpc

from harness.process import ServerProcess, by_labels, scrape
from harness.wait import until
from tests.serving_fixtures import REPO, SAMPLES, models_dir  # noqa: F401 - fixture

AS_NOBODY = (str(REPO / "tests" / "server" / "as_user.py"),)
POLL = ("--port", "0", "--device", "cpu", "--poll-seconds", "0.2")


@pytest.fixture
def root(models_dir):  # noqa: F811
    """A world-readable copy of the models in a folder nobody may enter (/tmp, not pytest's
    tmp_path under /root)."""
    folder = Path(tempfile.mkdtemp(prefix="storage-", dir="/tmp"))
    shutil.copytree(models_dir, folder / "models")
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if path.is_dir() else 0))
    yield folder / "models"
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(folder)


def classify(port: int, model: str = "lenet_bn") -> int:
    image = pb.Image(encoded=(SAMPLES / "bag.png").read_bytes())
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return pb_grpc.ClassifierStub(channel).Classify(pb.ClassifyRequest(
            model=model, images=[image]), timeout=30).version


def metric(server: ServerProcess, name: str, *labels: str) -> dict:
    return by_labels(scrape(server.metrics_port), name, *labels)


def polls(server: ServerProcess, n: int) -> None:
    """Until the repository has polled `n` more times (its DEBUG line says each)."""
    seen = server.count("polled ")
    server.wait_for_log("polled ", times=seen + n)


def test_a_models_folder_moved_away_and_back_keeps_serving(root):
    away = root.parent / "away"
    with ServerProcess("--models-dir", str(root), *POLL, "--log-level", "DEBUG",
                       metrics=True) as server:
        port = server.wait_for_port()
        root.rename(away)
        server.wait_for_log("cannot read the models folder")
        until(lambda: metric(server, "fmnist_models_folder_readable") == {(): 0})
        assert classify(port) == 1 and classify(port, "lenet") == 1  # nothing unloaded
        away.rename(root)
        server.wait_for_log("can be read again")
        polls(server, 2)
        assert metric(server, "fmnist_models_folder_readable") == {(): 1}
        assert classify(port) == 1
    assert server.count("cannot read the models folder") == 1
    assert server.count("unloaded lenet") == 0 and server.count("now serving") == 0


def test_an_unreadable_serving_file_keeps_serving_once_warned_without_churn(root):
    with ServerProcess("--models-dir", str(root), *POLL, "--log-level", "DEBUG",
                       entry=AS_NOBODY, metrics=True) as server:
        port = server.wait_for_port()
        (root / "lenet_bn" / "1" / "model.onnx").chmod(0)
        server.wait_for_log("lenet_bn v1: its file cannot be read now")
        polls(server, 5)
        assert metric(server, "fmnist_model_file_changed", "model", "version") == {
            ("lenet_bn", "1"): 1}
        assert classify(port) == 1
    assert server.count("its file cannot be read now") == 1
    assert server.count("now serving") == 0 and server.count("unloaded") == 0


def test_a_serving_file_truncated_in_place_is_reported_once_and_keeps_serving(root):
    with ServerProcess("--models-dir", str(root), *POLL, "--log-level", "DEBUG",
                       metrics=True) as server:
        port = server.wait_for_port()
        path = root / "lenet_bn" / "1" / "model.onnx"
        path.write_bytes(path.read_bytes()[:50_000])
        server.wait_for_log("lenet_bn v1: its file changed on disk since it was loaded")
        polls(server, 5)
        assert metric(server, "fmnist_model_file_changed", "model", "version") == {
            ("lenet_bn", "1"): 1}
        assert classify(port) == 1
    assert server.count("changed on disk") == 1 and "50,000 bytes" in server.log


def test_a_version_still_being_copied_in_is_incomplete_not_an_error_each_poll(root):
    """A copy that does not rename into place (cp -r straight into the folder): each poll sees
    a longer file (written right after the poll before); one INFO line, no ERROR, until it is
    whole and served."""
    with ServerProcess("--models-dir", str(root), *POLL, "--log-level", "DEBUG") as server:
        port = server.wait_for_port()
        whole = (root / "lenet_bn" / "1" / "model.onnx").read_bytes()
        target = root / "lenet_bn" / "2" / "model.onnx"
        target.parent.mkdir()
        for size in (1000, 20_000, 40_000, 60_000):
            target.write_bytes(whole[:size])
            polls(server, 1)
        target.write_bytes(whole)
        server.wait_for_log("now serving lenet_bn v2")
        assert classify(port) == 2
    assert server.count("is not loadable yet") == 1
    assert server.count("not served (") == 0 and " ERROR " not in server.log
