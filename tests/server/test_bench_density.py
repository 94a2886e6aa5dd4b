"""bench/density.py (`make bench-density`) runs end to end with tiny settings: every --workers
setting measured with shared weights on and off, each worker filled (a full batch of every model
answered) before its memory is read. No figure is asserted: memory and speed belong in the
benchmark."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.serving_fixtures import REPO


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load missing (`make install`)")
def test_bench_density_measures_each_setting_after_every_worker_ran_a_full_batch(models_dir,
                                                                                 tmp_path):
    out = subprocess.run([sys.executable, "-m", "bench.density", "--models-dir", str(models_dir),
                          "--workers", "1", "2", "--seconds", "0.2", "--images", "8",
                          "--artifacts", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "CPU: " in out.stdout and "x one worker" in out.stdout
    assert out.stdout.count("every one of 2 worker(s) answered 8 images of each model") == 2
    rows = json.loads((tmp_path / "bench" / "density.json").read_text())["rows"]
    memory = [(r["share_weights"], r["workers"]) for r in rows if "pss_mb" in r]
    assert memory == [("off", 1), ("off", 2), ("on", 1), ("on", 2)]
    assert all(r["pss_mb"] > 0 for r in rows if "pss_mb" in r)
    speed = [(r["model"], r["share_weights"]) for r in rows if "images_per_s" in r]
    assert speed == [("lenet_bn", "off"), ("lenet_bn", "on")]
    assert "lenet_bn: sharing on / off = " in out.stdout
