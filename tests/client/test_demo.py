"""scripts/demo_classify.py: server in the background, every model on samples/, clean SIGTERM."""

from __future__ import annotations

import subprocess
import sys

from tests.serving_fixtures import REPO, SAMPLES

DEMO = REPO / "scripts" / "demo_classify.py"


def demo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DEMO), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_demo_classifies_the_samples_with_every_model(models_dir):
    out = demo("--models-dir", str(models_dir), "--samples", str(SAMPLES), "--device", "cpu")
    assert out.returncode == 0, out.stderr
    header, *rows, last = out.stdout.strip().splitlines()
    assert header.split() == ["model", "version", "provider", "test", "acc", "on", "images",
                              "samples", "right"]
    assert [r.split()[0] for r in rows] == ["lenet", "lenet_bn"]
    assert all(r.split()[2] == "CPUExecutionProvider" and r.endswith("/10") for r in rows)
    assert "exit 0" in last
    assert "SIGTERM received" in out.stderr


def test_demo_fails_without_models(tmp_path):
    out = demo("--models-dir", str(tmp_path), "--samples", str(SAMPLES), "--device", "cpu")
    assert out.returncode == 1
    assert "error: the server exited with status 1: cannot start: no model in" in out.stderr
    assert "Traceback" not in out.stderr
