"""Server tests: real exported models (tests/serving_fixtures.py) behind a real loopback server."""

from __future__ import annotations

import grpc
import pytest
from fmnist.v1 import classifier_pb2_grpc as pb_grpc

from server.app import create_server
from server.dataplane.types import Limits
from tests.serving_fixtures import models_dir, samples  # noqa: F401 - fixtures

# Small limits so the limit paths are cheap to reach; max_in_flight leaves room for concurrency tests.
TEST_LIMITS = Limits(max_images_per_request=16, max_image_pixels=4_000_000,
                     max_message_bytes=1024 * 1024, max_in_flight=8)


@pytest.fixture(scope="module")
def server(models_dir):  # noqa: F811
    srv, _ = create_server(models_dir, port=0, device="cpu", limits=TEST_LIMITS)
    srv.start()
    yield srv
    srv.stop(0)


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.ClassifierStub(channel)
