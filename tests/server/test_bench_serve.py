"""bench/serve.py runs end to end (a smoke test with tiny settings; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.serving_fixtures import REPO


def test_bench_serve_smoke(models_dir, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "bench.serve", "--models-dir", str(models_dir), "--models", "lenet",
         "--device", "cpu", "--seconds", "0.2", "--callers", "1", "2", "--batch-callers", "2",
         "--max-batch", "4", "--no-attacks", "--artifacts", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "CPU: " in out.stdout and "ISA: " in out.stdout
    assert "32 callers" not in out.stdout  # only the cells asked for
    assert "1 caller p50 - in-process batch-1 p50" in out.stdout
    document = json.loads((tmp_path / "bench" / "serve.json").read_text())
    cells = [(r["side"], r["batch"], r["callers"]) for r in document["rows"]]
    assert cells == [("in-process", 1, 1), ("in-process", 4, 1), ("server", 1, 1),
                     ("server", 1, 2), ("server", 4, 2)]
    assert all(r["calls"] > 0 and r["images_per_s"] > 0 for r in document["rows"])
    assert document["cpu"] and isinstance(document["isa"], list)


def test_bench_serve_fails_when_the_server_does_not_exit_cleanly(models_dir, tmp_path):
    """An unknown server argument makes the server exit 2 at once: the benchmark must say so
    and fail, not report success."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.serve", "--models-dir", str(models_dir), "--models", "lenet",
         "--device", "cpu", "--seconds", "0.2", "--no-attacks", "--server-arg=--no-such-flag",
         "--artifacts", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "did not start" in out.stdout + out.stderr


def test_bench_serve_says_what_to_run_without_models(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bench.serve", "--models-dir", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "make train export" in out.stderr


def test_bench_peer_says_how_to_get_mlserver(models_dir, tmp_path):
    """MLServer lives in .venv-peer, which `make bench-peer` creates; CI has none, so this checks
    the one-line way out (the comparison itself ran by hand; docs/benchmarks.md)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.peer", "--models-dir", str(models_dir), "--models", "lenet",
         "--peer-python", str(tmp_path / "no-venv" / "bin" / "python"), "--artifacts",
         str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "make bench-peer" in out.stderr
