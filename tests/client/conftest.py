"""Client tests: client/predict.py as a user runs it, against a real loopback server."""

from __future__ import annotations

import pytest

from server.app import create_server
from server.core import Limits
from tests.serving_fixtures import models_dir, samples  # noqa: F401 - fixtures

# At most 4 images per request, so the 10 samples take three batches.
CLIENT_LIMITS = Limits(max_images_per_request=4, max_message_bytes=1024 * 1024)


@pytest.fixture(scope="module")
def server(models_dir):  # noqa: F811
    srv, _ = create_server(models_dir, port=0, device="cpu", limits=CLIENT_LIMITS)
    srv.start()
    yield srv
    srv.stop(0)


@pytest.fixture(scope="module")
def address(server) -> str:
    return f"127.0.0.1:{server.port}"
