"""bench/serve.py and bench/peer.py run end to end (smoke tests with tiny settings; no timing is
asserted: speed belongs in `make bench-serve`), and fail when what they measure is not what they
meant to measure."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.serving_fixtures import REPO

needs_h2load = pytest.mark.skipif(shutil.which("h2load") is None,
                                  reason="h2load missing: `make install` installs it as root "
                                         "(Debian nghttp2-client)")
TINY = ("--models", "lenet", "--device", "cpu", "--seconds", "0.2", "--no-attacks",
        "--cold-start-runs", "0")


def bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.serve", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@needs_h2load
def test_bench_serve_measures_every_cell_it_was_asked_for(models_dir, tmp_path):
    out = bench("--models-dir", str(models_dir), *TINY, "--callers", "1", "2", "--workers", "1",
                "--batch-callers", "2", "--max-batch", "4", "--tracing", "off", "1.0",
                "--tracing-callers", "2", "--cold-start-runs", "1", "--artifacts", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "CPU: " in out.stdout and "ISA: " in out.stdout and "load average" in out.stdout
    assert "1 caller p50 - in-process batch-1 p50" in out.stdout
    assert "32 callers" not in out.stdout.split("\nlenet\n")[1].split("\n\n")[0]  # asked: 1, 2
    document = json.loads((tmp_path / "bench" / "serve.json").read_text())
    cells = [(r["side"], r["protocol"], r["workers"], r["batch"], r["callers"])
             for r in document["rows"]]
    assert cells == [
        ("in-process", "-", "-", 1, 1), ("in-process", "-", "-", 4, 1),
        ("bare grpc.aio", "v1", "1", 1, 1), ("bare grpc.aio", "v1", "1", 1, 2),
        ("bare grpc.aio", "v1", "2", 1, 1), ("bare grpc.aio", "v1", "2", 1, 2),
        ("fmnist-serve", "v1", "1", 1, 1), ("fmnist-serve", "v1", "1", 1, 2),
        ("fmnist-serve", "v1", "1", 4, 2),
        ("fmnist-serve", "v2", "1", 1, 1), ("fmnist-serve", "v2", "1", 1, 2),
        *(("fmnist-serve", f"http {kind}", "1", 1, callers)
          for kind in ("json", "binary", "multipart") for callers in (1, 2)),
        ("fmnist-serve traced", "v1", "1", 1, 2), ("fmnist-serve traced", "v1", "1", 1, 2)]
    assert "fmnist-serve HTTP multipart, workers 1" in out.stdout
    off, on = [r for r in document["rows"] if r["side"] == "fmnist-serve traced"]
    assert (off["tracing"], on["tracing"]) == ("off", "1.0")
    assert off["exports"] == 0 < on["exports"]  # the stand-in collector got spans from 1.0 only
    assert "fmnist-serve v1, workers 1, tracing sampling 1.0" in out.stdout
    assert "32 callers, tracing 1.0 / off" not in out.stdout  # asked: 2 callers
    assert all(r["calls"] > 0 and r["images_per_s"] > 0 for r in document["rows"])
    assert document["cpu"] and isinstance(document["isa"], list)
    assert len(document["load_before"]) == 3
    cold = {r["what"]: r for r in document["cold_start"]}
    assert list(cold) == ["server, first start on a host", "server start", "worker replacement"]
    for row in cold.values():  # the phases are parts of the time measured
        parts = [row[p] for p in ("start-up", "sessions", "warm-up", "probes", "batchers")]
        assert all(p >= 0 for p in parts) and 0 < sum(parts) <= row["seconds"], row
    assert cold["server start"]["start-up"] > 0 and cold["worker replacement"]["start-up"] > 0
    assert "worker replacement: " in out.stdout and "goal <= 3 s" in out.stdout


@needs_h2load
def test_bench_serve_fails_when_the_server_refuses_calls_h2load_counts_as_http_200(
        models_dir, tmp_path):
    """--max-in-flight 1 with 16 callers: some calls are RESOURCE_EXHAUSTED, each an HTTP 200
    with a gRPC error to h2load; the server's own counts give them away."""
    out = bench("--models-dir", str(models_dir), *TINY, "--callers", "16", "--workers", "1",
                "--protocols", "v1", "--batch-callers", "0", "--no-bare",
                "--server-arg=--max-in-flight", "--server-arg=1", "--artifacts", str(tmp_path))
    assert out.returncode != 0
    assert "the server counted {'RESOURCE_EXHAUSTED'" in out.stdout + out.stderr


def test_bench_serve_fails_when_the_server_does_not_exit_cleanly(models_dir, tmp_path):
    """An unknown server argument makes the server exit 2 at once: the benchmark must say so
    and fail, not report success."""
    out = bench("--models-dir", str(models_dir), *TINY, "--no-bare",
                "--server-arg=--no-such-flag", "--artifacts", str(tmp_path))
    assert out.returncode != 0
    assert "did not start" in out.stdout + out.stderr


def test_bench_serve_says_what_to_run_without_models(tmp_path):
    out = bench("--models-dir", str(tmp_path), timeout=120)
    assert out.returncode != 0 and "make train export" in out.stderr


def test_bench_peer_says_how_to_get_its_peers(models_dir, tmp_path):
    """MLServer and PyTriton live in venvs `make bench-peer` creates; without them the
    benchmark says so in one line (the comparison itself: `make bench-peer`)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.peer", "--models-dir", str(models_dir), "--models", "lenet",
         "--mlserver-python", str(tmp_path / "no-venv" / "bin" / "python"), "--artifacts",
         str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "make bench-peer" in out.stderr


@pytest.mark.slow
@needs_h2load
def test_bench_peer_checks_a_cell_against_the_same_server_measured_alone(models_dir, tmp_path):
    """Without peers (--peers alone): fmnist-serve's cells, each with the cores others used
    meanwhile, and the check that measures the first --workers setting's cell again with the
    other servers stopped (the agreement itself is the benchmark's verdict, not asserted here:
    speed on a shared machine is not a test's business)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.peer", "--models-dir", str(models_dir), "--models", "lenet",
         "--peers", "--workers", "1", "2", "--callers", "2", "--seconds", "0.3",
         "--artifacts", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "check: lenet fmnist-serve workers 1, 2 callers: the cell " in out.stdout, out.stderr
    document = json.loads((tmp_path / "bench" / "peer.json").read_text())
    check = document["check"]
    assert check["cell_images_per_s"] > 0 and check["alone_images_per_s"] > 0
    assert out.returncode == (0 if check["agree"] else 1), out.stdout + out.stderr
    assert all(r["others_cores"] >= 0 for r in document["rows"])
    assert [(r["workers"], r["callers"]) for r in document["rows"]] == [("1", 2), ("2", 2)]
