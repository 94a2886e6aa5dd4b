"""Client tests: client/predict.py as a user runs it, against a real loopback server."""

from __future__ import annotations

import pytest

from server.dataplane.types import Limits
from tests.client.predict_cli import serving
from tests.serving_fixtures import models_dir, samples  # noqa: F401 - fixtures

# At most 4 images per request, so the 10 samples take three batches.
CLIENT_LIMITS = Limits(max_images_per_request=4, max_message_bytes=1024 * 1024)


@pytest.fixture(scope="module")
def server(models_dir):  # noqa: F811
    """One server per test module (lenet and lenet_bn at version 1)."""
    with serving(models_dir, limits=CLIENT_LIMITS) as srv:
        yield srv


@pytest.fixture(scope="module")
def address(server) -> str:
    return f"127.0.0.1:{server.port}"
