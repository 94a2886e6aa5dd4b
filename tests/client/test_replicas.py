"""Several servers as one service: `--server ip:port,ip:port` (or a dns:/// target) is dialled
with client/balancing.py's settings. Against two real servers (`python -m server` processes,
or in-process ones where a test sets their state), each counting its own answers on /metrics: both answer one run (round_robin), a server that stops
answering mid-run costs no image (keepalive finds it, the retry policy replays on the other),
one killed is left out, a call every replica refuses is tried 5 times in all (the policy's
tries, not multiplied by the interceptor's), one whose health says NOT_SERVING gets no call, and
a list that cannot be dialled is one line saying what to write instead."""

from __future__ import annotations

import contextlib
import json
import signal

import pytest

from client.address import dial_target
from harness.process import ServerProcess
from harness.wait import until
from tests.client.predict_cli import (one_line_error, predict, requests_by_code, sample_copies,
                                      serving, start_predict)
from tests.serving_fixtures import SAMPLES

BAG = str(SAMPLES / "bag.png")
IMAGES = 40  # one image a request (below), so 40 calls to spread


@contextlib.contextmanager
def two_servers(models_dir):
    """Two servers answering one image a request, and the --server that names both."""
    flags = ("--models-dir", str(models_dir), "--port", "0", "--device", "cpu",
             "--max-images-per-request", "1")
    with ServerProcess(*flags, metrics=True) as a, ServerProcess(*flags, metrics=True) as b:
        yield a, b, f"127.0.0.1:{a.wait_for_port()},127.0.0.1:{b.wait_for_port()}"


def answered(server: ServerProcess) -> float:
    return requests_by_code(server.metrics_port).get("OK", 0)


def test_one_run_is_answered_by_every_server_of_the_list(models_dir, tmp_path):
    files = sample_copies(tmp_path / "many", IMAGES)
    with two_servers(models_dir) as (a, b, servers):
        out = predict(str(tmp_path / "many"), "--json", "--model", "lenet_bn", "--server", servers)
        counts = [answered(a), answered(b)]
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert [r["file"] for r in shown["results"]] == list(map(str, files))
    assert shown["server"] == f"ipv4:{servers}"
    assert sum(counts) == IMAGES and min(counts) > 0, counts  # pick_first: all on one


def test_a_server_that_stops_answering_mid_run_costs_no_image(models_dir, tmp_path):
    """One server is stopped (SIGSTOP) mid-run, so the next call round_robin hands it hangs:
    keepalive finds the connection dead within about 2 s and the retry policy replays that call
    on the other server, which answers the rest of the run. Killed then, the stopped server is
    simply left out of the next run."""
    files = sample_copies(tmp_path / "many", 10 * IMAGES)
    with two_servers(models_dir) as (a, b, servers):
        run = start_predict(str(tmp_path / "many"), "--model", "lenet_bn", "--server", servers)
        until(lambda: answered(a) >= 10, 60, "10 answers from the server to be stopped")
        a.proc.send_signal(signal.SIGSTOP)
        later = answered(b) + 20
        until(lambda: answered(b) >= later or run.poll() is not None, 60,
              "20 more answers from the other server")
        a.proc.kill()
        out, err = run.communicate(timeout=120)
        again = predict(BAG, "--model", "lenet_bn", "--server", servers)
    assert run.returncode == 0, err
    assert [line.split(":")[0] for line in out.splitlines()] == list(map(str, files))
    assert err == ""
    assert again.returncode == 0, again.stderr


@pytest.fixture
def refusing(models_dir):
    """Two in-process servers whose cores refuse every call with UNAVAILABLE, as in a drain,
    while their health still says SERVING (so the client keeps sending to them)."""
    with serving(models_dir, metrics_port=0) as a, serving(models_dir, metrics_port=0) as b:
        a.core.drain()
        b.core.drain()
        yield a, b


def test_a_call_every_server_refuses_is_tried_five_times_in_all(refusing):
    a, b = refusing
    servers = f"127.0.0.1:{a.port},127.0.0.1:{b.port}"
    one_line_error(predict(BAG, "--model", "lenet_bn", "--server", servers), 1,
                   f"the server at ipv4:{servers} is draining")
    tries = [requests_by_code(s.metrics.port).get("UNAVAILABLE", 0) for s in (a, b)]
    assert sum(tries) == 5 and min(tries) > 0, tries  # 25 if both retried; all on one: no replay


def test_a_server_whose_health_says_not_serving_gets_no_call(address, tmp_path):
    """A server with no model to serve is up but not ready: without health checking,
    round_robin would hand it every other call and the run would fail (NOT_FOUND)."""
    with serving(tmp_path, allow_empty=True) as unready:
        others = f"{address},127.0.0.1:{unready.port}"
        out = predict(str(SAMPLES), "--model", "lenet_bn", "--server", others)
        alone = predict(BAG, "--server", f"127.0.0.1:{unready.port},127.0.0.1:{unready.port}")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == len(list(SAMPLES.glob("*.png")))
    one_line_error(alone, 1, "no server at ipv4:", "takes calls", "backend unhealthy",
                   "NOT_SERVING")


def test_a_dns_target_is_dialled_as_replicas(address):
    """localhost may resolve to ::1 as well, where nothing listens: round_robin uses the
    address that answers."""
    target = f"dns:///localhost:{address.rsplit(':', 1)[1]}"
    out = predict(BAG, "--json", "--model", "lenet_bn", "--server", target)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["server"] == target


def test_a_list_takes_the_default_port_and_ipv6():
    assert dial_target("10.0.0.7,10.0.0.8:50052") == "ipv4:10.0.0.7:50051,10.0.0.8:50052"
    assert dial_target("::1, [::2]:50052") == "ipv6:[::1]:50051,[::2]:50052"


@pytest.mark.parametrize("servers, says", [
    ("127.0.0.1:50051,[::1]:50051", "a list of servers takes IPv4 or IPv6 addresses, not both"),
    ("localhost:50051,localhost:50052", "'localhost' is not an IP address: a list of servers "
                                        "takes IP addresses; give a name as dns:///localhost:"),
    ("127.0.0.1:50051,127.0.0.1:99999", "'99999' is not a port number"),
    ("grpc://127.0.0.1:50051,127.0.0.1:50052", "write a list of servers without a scheme"),
    ("127.0.0.1:50051,", "no host in it")])
def test_a_list_that_cannot_be_dialled_says_what_to_write(servers, says):
    one_line_error(predict("--list", "--server", servers), 2, f"--server {servers}: {says}")
    one_line_error(predict("--list", env={"FMNIST_SERVER": servers}), 2,
                   f"FMNIST_SERVER={servers}: {says}")
