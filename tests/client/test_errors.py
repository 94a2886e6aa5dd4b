"""Mistakes a person can make, each one line on stderr saying what to do, and exit 1 (server or
RPC) or 2 (arguments): no server, the wrong port, a deadline too short, an unknown model."""

from __future__ import annotations

import http.server
import json
import threading
from concurrent import futures

import grpc
import pytest

from tests.client.predict_cli import free_port, one_line_error, predict
from tests.serving_fixtures import SAMPLES

BAG = str(SAMPLES / "bag.png")


class _Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # grpc's HTTP/2 preface is logged as an error else
        pass


@pytest.fixture(scope="module")
def http_port():
    """A plain HTTP/1 server, as the metrics port (8002) is: a port people mistake for gRPC's."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    thread.join()


@pytest.fixture(scope="module")
def other_grpc(tmp_path_factory):
    """A gRPC server with no fmnist.v1.Classifier (another service on that port), on a loopback
    port and a unix socket: (port, socket path)."""
    socket_path = tmp_path_factory.mktemp("grpc-socket") / "other.sock"
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.add_insecure_port(f"unix:{socket_path}")
    srv.start()
    yield port, socket_path
    srv.stop(0)


def test_no_server_is_connection_refused_in_one_line():
    down = f"127.0.0.1:{free_port()}"
    one_line_error(predict(BAG, "--server", down), 1,
                   f"nothing listens at {down} (connection refused)", "make serve")
    one_line_error(predict("--list", "--server", down), 1, "connection refused")


def test_an_http_port_is_named_as_not_grpc(http_port):
    where = f"127.0.0.1:{http_port}"
    one_line_error(predict(BAG, "--server", where), 1, f"{where} does not speak gRPC",
                   "wrong port?", "50051")


def test_a_grpc_port_without_the_classifier_is_named(other_grpc):
    where = f"127.0.0.1:{other_grpc[0]}"
    one_line_error(predict("--list", "--server", where), 1,
                   f"{where} answers gRPC but not fmnist.v1.Classifier", "wrong port")


def test_grpc_target_uris_are_dialled_as_written(other_grpc):
    """No port is added to a gRPC target URI: these reach the server above (which answers
    UNIMPLEMENTED), so they were dialled as written."""
    port, socket_path = other_grpc
    for where in (f"unix:{socket_path}", f"dns:///127.0.0.1:{port}", f"ipv4:127.0.0.1:{port}"):
        one_line_error(predict("--list", "--server", where), 1,
                       f"{where} answers gRPC but not fmnist.v1.Classifier")


def test_a_timeout_too_short_says_so(address):
    one_line_error(predict(BAG, "--server", address, "--timeout", "0.000001"), 1,
                   f"no answer from {address} within --timeout 1e-06s", "give it longer")
    assert predict(BAG, "--server", address, "--timeout", "30").returncode == 0


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_a_timeout_that_is_not_a_duration_is_refused(value):
    out = predict(BAG, "--timeout", value)
    assert out.returncode == 2
    assert "--timeout" in out.stderr.splitlines()[-1] and "Traceback" not in out.stderr


def test_an_unknown_model_names_the_served_ones(address):
    one_line_error(predict(BAG, "--model", "resnet1000", "--server", address), 1,
                   "NOT_FOUND", "resnet1000", "lenet_bn")


@pytest.mark.parametrize("server", ["localhost:abc", "localhost:0", "localhost:70000", ":50051",
                                    "[::1", "[::1]x", "dns://127.0.0.1:50051", "http://"])
def test_a_server_address_that_cannot_be_dialled_is_one_line(server):
    one_line_error(predict("--list", "--server", server), 2, f"--server {server}")


@pytest.mark.parametrize("server, says", [
    ("ftp://127.0.0.1:50051", "unknown scheme ftp://"),
    ("http://127.0.0.1:8000/v2/models", "a gRPC server address has no path ('/v2/models')"),
    ("https://127.0.0.1:50051", "https:// means TLS: give --tls-ca"),
    ("grpcs://127.0.0.1:50051", "grpcs:// means TLS: give --tls-ca")])
def test_a_url_the_client_cannot_follow_says_why(server, says):
    one_line_error(predict("--list", "--server", server), 2, f"--server {server}: {says}")


@pytest.mark.parametrize("written", ["http://{}", "grpc://{}", "HTTP://{}/", "dns:///{}"])
def test_an_address_written_as_a_url_or_a_grpc_target_reaches_the_server(address, written):
    """grpc alone dials `http://127.0.0.1:52051` as the host name `http://127.0.0.1:52051` on
    port 443 (the client used to add 50051 to it: `[http://127.0.0.1:52051]:50051`)."""
    out = predict(BAG, "--json", "--model", "lenet_bn", "--server", written.format(address))
    assert out.returncode == 0, out.stderr
    dialled = json.loads(out.stdout)["server"]
    assert dialled == (f"dns:///{address}" if written.startswith("dns") else address)


def test_fmnist_server_is_the_address_when_server_is_not_given(address):
    out = predict(BAG, "--json", "--model", "lenet_bn", env={"FMNIST_SERVER": f"grpc://{address}"})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["server"] == address
    nowhere = f"127.0.0.1:{free_port()}"
    assert predict(BAG, "--server", address, env={"FMNIST_SERVER": nowhere}).returncode == 0
    one_line_error(predict(BAG, env={"FMNIST_SERVER": nowhere}), 1,
                   f"nothing listens at {nowhere}")
    one_line_error(predict(BAG, env={"FMNIST_SERVER": "localhost:abc"}), 2,
                   "FMNIST_SERVER=localhost:abc: 'abc' is not a port number")


def test_a_request_the_server_refuses_as_a_whole_is_one_line_not_one_per_file(address):
    """A model name over the server's limit is INVALID_ARGUMENT for any request: after splitting
    the batch down to one image (tests/client/test_inputs.py, pixels per request) it is the
    request's fault, reported once; no file is blamed."""
    out = predict(str(SAMPLES), "--model", "m" * 200, "--server", address)
    one_line_error(out, 1, "INVALID_ARGUMENT", "over 128 bytes")
    assert out.stdout == ""
