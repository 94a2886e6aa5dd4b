"""`make profile-serve` (scripts/profile_serve.py) as people run it: a real server under load,
sampled by py-spy, with each flag's effect visible in what it prints or writes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

from tests.serving_fixtures import REPO, models_dir  # noqa: F401 - fixture


def test_profile_serve_prints_the_cost_per_request_by_thread(models_dir, tmp_path):  # noqa: F811
    driver = "h2load" if shutil.which("h2load") else "python"
    proc = subprocess.run(
        [sys.executable, "scripts/profile_serve.py", "--models-dir", str(models_dir),
         "--model", "lenet_bn", "--callers", "4", "--seconds", "1", "--protocols", "v1",
         "--rate", "50", "--top", "2", "--driver", driver, "--server-arg=--max-batch=8",
         "--artifacts", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert f"lenet_bn v1, 4 single-image callers ({driver})" in out
    assert "py-spy at 50 Hz; server flags: --max-batch=8" in out
    assert re.search(r"^v1: [\d,]+ img/s, server CPU [\d,]+ us per request", out, re.M), out
    assert "\nv2:" not in out  # --protocols v1 only
    assert re.search(r"% of the CPU  grpc-loop", out) and "batcher-lenet_bn v1" in out
    # --top 2: at most two leaf frames and two of the server's own frames per Python thread
    loop = out.split("grpc-loop", 1)[1].split("% of the CPU", 1)[0]
    assert 1 <= sum(1 for line in loop.splitlines() if "incl." in line) <= 2
    stacks = (tmp_path / "profile" / "v1.txt").read_text()
    assert re.match(r"thread \(\d+\): ", stacks)
