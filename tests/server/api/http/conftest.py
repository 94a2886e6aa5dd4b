"""HTTP tests: real servers (create_server, or `python -m server` in test_cli.py) on 127.0.0.1
answering real HTTP; the models are tests/serving_fixtures.py's, and for the page a lenet_bn
trained on the real Fashion-MNIST (`coat_models_dir`)."""

from __future__ import annotations

import shutil

import pytest

from server.app import create_server
from tests.server.conftest import TEST_LIMITS
from tests.serving_fixtures import run_cli


@pytest.fixture(scope="module")
def http_server(models_dir):
    """lenet and lenet_bn (a few training steps) over gRPC, HTTP and /metrics."""
    srv, _ = create_server(models_dir, port=0, device="cpu", limits=TEST_LIMITS, http_port=0,
                           metrics_port=0)
    srv.start()
    yield srv
    srv.stop(0)


@pytest.fixture(scope="module")
def base(http_server) -> str:
    return f"http://127.0.0.1:{http_server.http_port}"


@pytest.fixture(scope="session")
def coat_models_dir(tmp_path_factory, models_dir):
    """A models folder with a lenet_bn that classifies samples/coat.png as a Coat: trained on the
    real Fashion-MNIST (the trainer's own search: $FASHION_MNIST_DIR, then Debian's
    /usr/share/datasets/fashion-mnist, which `make install` as root installs) with the improved
    recipe, 2 epochs of 12,000 images (about a minute on 2 cores; 0.81 test accuracy, Coat at
    0.71). Beside it the fixtures' lenet (synthetic data), so the page has two models to pick."""
    artifacts = tmp_path_factory.mktemp("coat-artifacts")
    run_cli("-m", "trainer", "--models", "lenet_bn", "--recipe", "improved", "--epochs", "2",
            "--limit-train", "12000", "--eval-images", "1000", "--artifacts", str(artifacts),
            "--device", "cpu", "--no-progress", timeout=900)
    run_cli("-m", "exporter", "--models", "lenet_bn", "--artifacts", str(artifacts),
            "--test-images", "1000", "--no-progress", timeout=900)
    shutil.copytree(models_dir / "lenet", artifacts / "models" / "lenet")
    return artifacts / "models"
