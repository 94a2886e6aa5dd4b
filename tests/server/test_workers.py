"""--workers through `python -m server` itself: N processes on one port behind a parent, their
metrics added up, one health answer, SIGTERM, a killed worker replaced, --max-worker-rss-mb
recycling without a failed request, live reload in every worker, a port held by another program,
and the usable cores (CPU affinity, cgroup quota) that `auto` and the thread counts come from."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import pytest
from fmnist.v1 import classifier_pb2 as pb
from fmnist.v1 import classifier_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.workers.cores import Cores, plan, usable_cores
from server.metrics.summing import MetricsSum, parse
from harness.process import ServerProcess, by_labels, free_port, scrape
from scripts.attacks.wire import http_exchange, request_head
from tests.serving_fixtures import models_dir  # noqa: F401 - fixture

CPU = ("--port", "0", "--http-port", "0", "--device", "cpu")
STARTED = re.compile(r"worker (\d+) \(pid (\d+)\) started: metrics on 127\.0\.0\.1:(\d+)")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def root(models_dir):  # noqa: F811
    """A private copy of the session's models folder, with lenet_bn only."""
    folder = Path(tempfile.mkdtemp(prefix="workers-", dir="/tmp"))
    shutil.copytree(models_dir / "lenet_bn", folder / "models" / "lenet_bn")
    yield folder / "models"
    shutil.rmtree(folder)


def request() -> pb.ClassifyRequest:
    return pb.ClassifyRequest(model="lenet_bn", images=[pb.Image(raw=bytes(range(256)) * 3
                                                                 + bytes(16))])


def classify_on_fresh_connections(port: int, connections: int, calls: int) -> int:
    """`calls` Classify on each of `connections` new connections (each lands on a worker the
    kernel picks); returns how many answered OK (any error fails)."""
    ok = 0
    for _ in range(connections):
        with grpc.insecure_channel(f"127.0.0.1:{port}",
                                   options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            stub = pb_grpc.ClassifierStub(channel)
            for _ in range(calls):
                assert stub.Classify(request(), timeout=30).classifications
                ok += 1
    return ok


def health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}",
                               options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                         timeout=30).status


def started_workers(server: ServerProcess) -> dict[int, tuple[int, int]]:
    """pid -> (slot, private metrics port), from the parent's log."""
    return {int(m[2]): (int(m[1]), int(m[3])) for line in server.lines
            if (m := STARTED.search(line))}


def requests_ok(metrics_port: int) -> float:
    return sum(v for (code,), v in by_labels(scrape(metrics_port), "fmnist_requests_total",
                                             "code").items() if code == "OK")


def test_two_workers_serve_one_port_add_up_their_metrics_and_stop_on_sigterm(root):
    with ServerProcess("--models-dir", str(root), *CPU, "--workers", "2", "--grace", "5",
                       metrics=True) as server:
        port = server.wait_for_port()
        assert "2 worker(s), each with 1 onnxruntime intra-op thread(s)" in server.log
        assert health(port) == SERVING
        assert classify_on_fresh_connections(port, connections=24, calls=5) == 120
        workers = started_workers(server)
        assert len(workers) == 2
        each = [requests_ok(metrics) for _, metrics in workers.values()]
        assert all(n > 0 for n in each), each  # 24 connections: both workers had some
        samples = scrape(server.metrics_port)
        assert requests_ok(server.metrics_port) == sum(each) == 120
        assert by_labels(samples, "fmnist_workers", "state")[("serving",)] == 2
        assert by_labels(samples, "fmnist_model_ready", "model", "version") == {
            ("lenet_bn", "1"): 1}  # the minimum over the workers, not their sum
        server.proc.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
    assert sum("] stopped" in line for line in server.lines) == 2
    assert server.lines[-1].endswith("stopped")


def test_a_killed_worker_is_replaced_health_waits_for_it_and_the_port_keeps_answering(root):
    """The replacement cannot start while the models are away, so the gap is as long as the
    test needs: health says NOT_SERVING (not every worker serves), Classify still answers."""
    away = root.parent / "away"
    with ServerProcess("--models-dir", str(root), *CPU, "--workers", "2", "--poll-seconds", "0",
                       metrics=True) as server:
        port = server.wait_for_port()
        server.wait_for_log("health SERVING: every worker serves")
        (pid, (slot, _)), (_, (other, _)) = started_workers(server).items()
        (root / "lenet_bn").rename(away)
        os.kill(pid, signal.SIGKILL)
        server.wait_for_log(f"worker {slot} (pid {pid}) exited (signal SIGKILL): starting another")
        server.wait_for_log(f"health NOT_SERVING: worker(s) {slot} not serving")
        server.wait_for_log(f"[worker {other}] health NOT_SERVING: the parent's gate is closed")
        server.wait_for_log("exited (exit status 1): starting another in 1 s")
        assert health(port) == NOT_SERVING
        assert classify_on_fresh_connections(port, connections=4, calls=2) == 8
        away.rename(root / "lenet_bn")
        # 2 workers, twice
        server.wait_for_log("health SERVING: the parent's gate is open", 120, times=4)
        assert health(port) == SERVING
        assert len(started_workers(server)) == 3
        restarts = by_labels(scrape(server.metrics_port), "fmnist_worker_restarts_total",
                             "reason")
        assert restarts[("exited",)] >= 2  # the killed one and the one that could not start
        assert classify_on_fresh_connections(port, connections=8, calls=1) == 8


def test_rss_recycling_replaces_workers_without_a_failed_request(root):
    """--max-worker-rss-mb 1: every worker is over it, so they are replaced one after another
    while 8 callers keep classifying; not one call fails, and the metrics keep what the
    retired workers counted."""
    with ServerProcess("--models-dir", str(root), *CPU, "--workers", "2",
                       "--max-worker-rss-mb", "1", "--max-connection-age-seconds", "1",
                       metrics=True) as server:
        port = server.wait_for_port()
        stop, answered, errors = threading.Event(), [0], []

        def caller(channel):
            stub = pb_grpc.ClassifierStub(channel)
            while not stop.is_set():
                try:
                    stub.Classify(request(), timeout=30)
                    answered[0] += 1
                except grpc.RpcError as e:
                    errors.append(f"{e.code().name}: {e.details()}")

        channels = [grpc.insecure_channel(f"127.0.0.1:{port}",
                                          options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(4)]
        callers = [threading.Thread(target=caller, args=(c,)) for c in channels * 2]
        for t in callers:
            t.start()
        try:
            server.wait_for_log("a freshly started worker already uses")
            server.wait_for_log("retired (exit status 0)", 120, times=2)  # while the callers run
        finally:
            stop.set()
            for t in callers:
                t.join(60)
            for c in channels:
                c.close()
        assert errors == []
        assert answered[0] > 0
        assert requests_ok(server.metrics_port) == answered[0]
        restarts = by_labels(scrape(server.metrics_port), "fmnist_worker_restarts_total",
                             "reason")
        assert restarts[("rss",)] >= 2 and restarts[("exited",)] == 0


def test_rss_recycling_loses_no_http_connection(root):
    """Workers replaced one after another while 4 callers open a new HTTP connection for each
    request: every request is answered. Red with the workers each listening on a port of their
    own (SO_REUSEPORT: a retiring worker's queued connections were reset) and with asyncio's
    close right after an accept (connections it had accepted were dropped): 4 of ~88,000 lost
    in 16 retirements."""
    with ServerProcess("--models-dir", str(root), "--port", "0", "--device", "cpu",
                       "--workers", "2", "--max-worker-rss-mb", "1",
                       "--max-connection-age-seconds", "1", http=True) as server:
        server.wait_for_port()
        stop, answers = threading.Event(), Counter()
        head = request_head("GET", "/v2/health/live", {"Connection": "close"}, None)

        def caller():
            while not stop.is_set():
                answers[http_exchange("127.0.0.1", server.http_port, head, timeout=30).status] += 1

        callers = [threading.Thread(target=caller) for _ in range(4)]
        for t in callers:
            t.start()
        try:
            server.wait_for_log("retired (exit status 0)", 120, times=8)  # while they call
        finally:
            stop.set()
            for t in callers:
                t.join(60)
        assert set(answers) == {"200"}, answers
        assert answers["200"] > 1000


def test_a_new_version_is_served_by_every_worker(root):
    with ServerProcess("--models-dir", str(root), *CPU, "--workers", "2", "--poll-seconds",
                       "0.2", metrics=True) as server:
        server.wait_for_port()
        shutil.copytree(root / "lenet_bn" / "1", root / "lenet_bn" / "2")
        server.wait_for_log("[worker 0] now serving lenet_bn v2")
        server.wait_for_log("[worker 1] now serving lenet_bn v2")
        ready = by_labels(scrape(server.metrics_port), "fmnist_model_ready", "model", "version")
        assert ready == {("lenet_bn", "2"): 1}  # v1 unloaded in both (--keep-versions 1)


def test_a_port_another_program_listens_on_is_a_start_up_error_with_workers(root):
    """SO_REUSEPORT would let the workers share a port with another program of the same user
    that also set it: the parent refuses to start there, before any worker loads a model."""
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with ServerProcess("--models-dir", str(root), "--port", str(port), "--http-port", "0",
                           "--device", "cpu", "--workers", "2") as server:
            assert server.wait(60) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in server.log
    assert "loaded model" not in server.log


AFFINITY_ONE_CORE = ("-c", ("import os, sys; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))});"
                            " os.execv(sys.executable, [sys.executable, '-m', 'server', *sys.argv[1:]])"))


def test_workers_auto_follows_the_cpu_affinity(root):
    """Pinned to one CPU (as taskset or a cpuset does), `auto` is one worker with one thread of
    each kind, whatever os.cpu_count() says."""
    with ServerProcess("--models-dir", str(root), *CPU, "--workers", "auto",
                       entry=AFFINITY_ONE_CORE) as server:
        server.wait_for_port()
        assert ("1 usable core(s) (CPU affinity 1, cgroup quota none): 1 worker(s), each with 1 "
                "onnxruntime intra-op thread(s) and 1 decode thread(s)") in server.log
        assert "intra_op_threads=1" in server.log
        assert "decode_threads=1" in server.log
        assert "[worker" not in server.log  # one worker: no parent, the server itself


def write_cgroup(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize("membership, files, quota", [
    ("0::/\n", {"cpu.max": "max 100000\n"}, None),
    ("0::/\n", {"cpu.max": "50000 100000\n"}, 0.5),
    ("0::/pod/app\n", {"cpu.max": "max 100000\n", "pod/cpu.max": "150000 100000\n",
                       "pod/app/cpu.max": "max 100000\n"}, 1.5),  # an ancestor's quota counts
    ("0::/app\n", {"unified/app/cpu.max": "100000 100000\n"}, 1.0),  # v2 beside v1 (hybrid)
    ("4:cpu,cpuacct:/\n", {"cpu,cpuacct/cpu.cfs_quota_us": "100000\n",
                           "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 1.0),
    ("4:cpu,cpuacct:/\n", {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
                           "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, None),
    ("4:memory:/\n", {"memory/cpu.cfs_quota_us": "100000\n"}, None),  # not the CPU controller
])
def test_the_cgroup_quota_is_read_from_cpu_max_or_cfs_quota(tmp_path, membership, files, quota):
    root = write_cgroup(tmp_path / "cgroup", files)
    (tmp_path / "membership").write_text(membership)
    assert usable_cores(root, tmp_path / "membership").quota == quota


def test_usable_cores_are_the_affinity_capped_by_the_quota_rounded_up():
    assert Cores(affinity=64, quota=2.0).usable == 2
    assert Cores(affinity=64, quota=1.5).usable == 2
    assert Cores(affinity=64, quota=0.2).usable == 1
    assert Cores(affinity=2, quota=8.0).usable == 2
    assert Cores(affinity=3, quota=None).usable == 3


@pytest.mark.parametrize("workers, intra, decode, expected", [
    ("auto", 0, 0, (4, 1, 1)), (1, 0, 0, (1, 4, 4)), (3, 0, 0, (3, 1, 1)), (2, 0, 0, (2, 2, 2)),
    (8, 0, 0, (8, 1, 1)), (2, 3, 5, (2, 3, 5)),
])
def test_the_plan_gives_each_worker_its_share_unless_the_flags_say(workers, intra, decode,
                                                                     expected):
    import argparse
    args = argparse.Namespace(workers=workers, intra_op_threads=intra, decode_threads=decode)
    p = plan(args, Cores(affinity=16, quota=4.0))
    assert (p.workers, p.intra_op_threads, p.decode_threads) == expected


def worker_text(requests: float, in_flight: float, ready: dict[str, float]) -> str:
    lines = ["# TYPE fmnist_requests_total counter",
             f'fmnist_requests_total{{code="OK"}} {requests}',
             "# TYPE fmnist_requests_in_flight gauge", f"fmnist_requests_in_flight {in_flight}",
             "# TYPE fmnist_model_ready gauge"]
    lines += [f'fmnist_model_ready{{model="m",version="{v}"}} {x}' for v, x in ready.items()]
    return "\n".join(lines) + "\n"


def summed(total: MetricsSum) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in total.families()
            for s in f.samples}


def test_counters_keep_what_a_retired_worker_counted_gauges_do_not_and_ready_is_the_minimum():
    total = MetricsSum()
    total.update(1, worker_text(10, 2, {"1": 1, "2": 1}))
    total.update(2, worker_text(5, 1, {"1": 1}))  # has not loaded v2 yet
    first = summed(total)
    assert first[("fmnist_requests_total", (("code", "OK"),))] == 15
    assert first[("fmnist_requests_in_flight", ())] == 3
    assert first[("fmnist_model_ready", (("model", "m"), ("version", "1")))] == 1
    assert first[("fmnist_model_ready", (("model", "m"), ("version", "2")))] == 0
    total.retire(2, worker_text(7, 0, {"1": 1}))  # its final figures
    total.update(2, worker_text(99, 9, {"1": 1}))  # a scrape that raced its exit: ignored
    total.update(3, worker_text(1, 4, {"1": 1, "2": 1}))
    after = summed(total)
    assert after[("fmnist_requests_total", (("code", "OK"),))] == 10 + 7 + 1
    assert after[("fmnist_requests_in_flight", ())] == 2 + 4
    assert after[("fmnist_model_ready", (("model", "m"), ("version", "2")))] == 1
    assert parse(worker_text(1, 0, {}))["fmnist_requests"].kind == "counter"


def test_the_workers_share_the_http_port_too_and_a_taken_one_stops_the_start(root):
    http_port = free_port()
    with ServerProcess("--models-dir", str(root), "--port", "0", "--http-port", str(http_port),
                       "--device", "cpu", "--workers", "2") as server:
        server.wait_for_port()
        for n in (0, 1):
            server.wait_for_log(f"[worker {n}] HTTP on http://127.0.0.1:{http_port}/")
        for _ in range(8):  # new connections, each to a worker the kernel picks
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready",
                                        timeout=30) as answer:
                assert answer.status == 200
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        with ServerProcess("--models-dir", str(root), "--port", "0", "--http-port", str(taken),
                           "--device", "cpu", "--workers", "2") as server:
            assert server.wait(60) == 1
    assert f"cannot serve HTTP on 127.0.0.1:{taken}: Address already in use (--http-port" \
        in server.log
    assert "loaded model" not in server.log
