"""A run that fails halfway through a folder keeps what it got: every answer the server gave is
printed (in input order, as for a full run), then the error, exit 1. Two ways a real
`python -m server` stops answering mid-run: the model is unloaded (KServe v2 repository API), or
the server drains after SIGTERM, which the client names as draining, not as "cannot reach".

The client is paused (SIGSTOP) once the server has answered its first request and resumed once
the server is in the state under test, so the failure lands between two of its requests."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import urllib.error
import urllib.request

from harness.process import ServerProcess
from harness.wait import until
from tests.client.predict_cli import (one_line_error, predict, requests_by_code, sample_copies,
                                      start_predict)
from tests.serving_fixtures import SAMPLES

IMAGES = 2000  # 500 requests of 4: far more than are sent before the client is paused
PER_REQUEST = ("--max-images-per-request", "4")


def serve(models_dir, *flags: str) -> ServerProcess:
    return ServerProcess("--models-dir", str(models_dir), "--port", "0", "--device", "cpu",
                         *PER_REQUEST, *flags, http=True, metrics=True)


@contextlib.contextmanager
def paused_after_first_answer(run, server: ServerProcess):
    """The client run stopped (SIGSTOP) once the server has answered it; resumed on leaving."""
    until(lambda: requests_by_code(server.metrics_port).get("OK"), timeout=60,
          what="the server's first answer")
    run.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        run.send_signal(signal.SIGCONT)


def http_status(url: str, method: str = "GET") -> int:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def answered_prefix(files, shown: list[str]) -> int:
    """How many files were answered, checking they are the first ones, in order."""
    assert 0 < len(shown) < len(files), f"{len(shown)} of {len(files)} answered"
    assert shown == list(map(str, files[:len(shown)]))
    return len(shown)


def test_a_model_unloaded_mid_run_keeps_the_answers_so_far(models_dir, tmp_path):
    files = sample_copies(tmp_path / "many", IMAGES)
    with serve(models_dir, "--poll-seconds", "0", "--repository-api", "on") as server:
        address = f"127.0.0.1:{server.wait_for_port()}"
        base = f"http://127.0.0.1:{server.http_port}"
        run = start_predict(str(tmp_path / "many"), "--json", "--model", "lenet",
                            "--server", address)
        with paused_after_first_answer(run, server):
            assert http_status(f"{base}/v2/repository/models/lenet/unload", "POST") == 200
            assert http_status(f"{base}/v2/models/lenet/ready") == 404
        out, err = run.communicate(timeout=120)
    assert run.returncode == 1, err
    answer = json.loads(out)
    n = answered_prefix(files, [r["file"] for r in answer["results"]])
    assert (answer["model"], answer["version"]) == ("lenet", 1)
    assert answer["failure"].startswith("NOT_FOUND: model 'lenet' is not served")
    assert err.splitlines() == [f"error: {answer['failure']} (after {n} of {IMAGES} images were "
                                "classified)"]


@contextlib.contextmanager
def request_being_read(http_port: int):
    """An HTTP request whose body has not arrived yet: a request in flight that a draining
    server waits for (Server.stop counts them), held until the block ends."""
    with socket.create_connection(("127.0.0.1", http_port), timeout=30) as held:
        held.sendall(b"POST /v1/models/lenet_bn:classify HTTP/1.1\r\nHost: test\r\n"
                     b"Content-Type: application/octet-stream\r\nContent-Length: 1000\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        assert held.recv(100).startswith(b"HTTP/1.1 100 Continue")  # the server reads the body
        yield


def test_a_server_draining_mid_run_keeps_the_answers_so_far_and_says_draining(models_dir,
                                                                              tmp_path):
    files = sample_copies(tmp_path / "many", IMAGES)
    with serve(models_dir, "--grace", "60", "--request-read-timeout", "60") as server:
        address = f"127.0.0.1:{server.wait_for_port()}"
        with request_being_read(server.http_port):
            run = start_predict(str(tmp_path / "many"), "--model", "lenet_bn",
                                "--server", address)
            with paused_after_first_answer(run, server):
                server.proc.send_signal(signal.SIGTERM)
                server.wait_for_log("stopping: ")  # draining: new calls are refused from now
            out, err = run.communicate(timeout=120)
            later = predict(str(SAMPLES / "bag.png"), "--server", address)
        assert server.wait() == 0, server.log
    draining = (f"the server at {address} is draining (shutting down); try again or use another "
                "replica")
    assert run.returncode == 1, err
    n = answered_prefix(files, [line.split(":")[0] for line in out.splitlines()])
    assert err.splitlines() == [f"error: {draining} (after {n} of {IMAGES} images were "
                                "classified)"]
    assert all(line.endswith("[lenet_bn v1]") for line in out.splitlines())
    # a new run finds the port closed: a draining server stops listening at once, so that
    # clients and balancers go to another replica (its open connections still drain)
    one_line_error(later, 1, f"nothing listens at {address} (connection refused)")
    assert later.stdout == ""
