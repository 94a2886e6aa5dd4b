"""bench/serve.py runs end to end (a smoke test with tiny settings; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.serving_fixtures import REPO


def test_bench_serve_smoke(models_dir, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "bench.serve", "--models-dir", str(models_dir), "--models", "lenet",
         "--device", "cpu", "--seconds", "0.2", "--rounds", "1", "--batch-sizes", "1", "4",
         "--callers", "1", "2", "--json", str(tmp_path / "serve.json")],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "img/s ratio" in out.stdout
    rows = json.loads((tmp_path / "serve.json").read_text())["rows"]
    assert [(r["batch"], r["callers"]) for r in rows] == [(1, 1), (1, 2), (4, 1), (4, 2)]
    assert all(r["server"]["calls"] > 0 and r["in_process"]["images_per_s"] > 0 for r in rows)


def test_bench_serve_says_what_to_run_without_models(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bench.serve", "--models-dir", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "make train export" in out.stderr
