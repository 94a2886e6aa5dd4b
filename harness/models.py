"""Models trained for a few steps and exported through the real commands (`python -m trainer`,
`python -m exporter` as subprocesses, as a user runs them): what the server's tests, the soak
and the attack runs serve when no real models are given."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from harness import REPO
from harness.data import write_fashion_mnist

ARCHS = ("lenet_bn", "lenet")  # the two cheap ones: a few seconds of CPU each


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def build_models(artifacts: Path, data_dir: Path, archs: tuple[str, ...] = ARCHS) -> Path:
    """Train `archs` for a few steps and export them; returns artifacts/models."""
    run_cli("-m", "trainer", "--models", *archs, "--epochs", "1", "--limit-train", "256",
            "--data-dir", str(data_dir), "--artifacts", str(artifacts), "--device", "cpu",
            "--no-progress")
    run_cli("-m", "exporter", "--models", *archs, "--artifacts", str(artifacts),
            "--data-dir", str(data_dir), "--no-progress")
    return artifacts / "models"


def build_small_models(workdir: Path, archs: tuple[str, ...] = ARCHS) -> Path:
    """A synthetic data set in `workdir`/data and `archs` trained on it and exported; returns
    the models folder (about a minute on 2 cores)."""
    return build_models(workdir, write_fashion_mnist(workdir / "data"), archs)
