"""--server: the port is the server's default (50051) when the address names none (grpc alone
would dial 443), IPv6 literals work with and without a port, and the default is 127.0.0.1:50051.

Two real servers listen on port 50051 here, one on 127.0.0.1 and one on ::1 (localhost is
127.0.0.1 in some /etc/hosts, ::1 in others); the tests skip when that port is taken."""

from __future__ import annotations

import contextlib
import json

import pytest

from server.errors import StartupError
from tests.client.predict_cli import predict, serving

DEFAULT_PORT = 50051


@pytest.fixture(scope="module")
def default_port_servers(models_dir):
    with contextlib.ExitStack() as stack:
        for host in ("127.0.0.1", "::1"):
            try:
                stack.enter_context(serving(models_dir, host=host, port=DEFAULT_PORT))
            except StartupError as e:
                pytest.skip(f"port {DEFAULT_PORT} on {host} is taken here: {e}")
        yield


@pytest.mark.parametrize("server", ["localhost", "127.0.0.1", "[::1]", "::1", "[::1]:50051",
                                    "dns:///localhost", "http://[::1]", None])
def test_an_address_without_a_port_dials_50051(default_port_servers, server):
    out = predict("--list", "--json", *(["--server", server] if server else []))
    assert out.returncode == 0, out.stderr
    listing = json.loads(out.stdout)
    assert {m["name"] for m in listing["models"]} == {"lenet", "lenet_bn"}
    assert {m["test_images"] for m in listing["models"]} == {256}  # the fixture's, not another's


def test_the_dialled_address_is_the_one_reported(default_port_servers):
    out = predict("samples/bag.png", "--json", "--server", "[::1]")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["server"] == "[::1]:50051"
