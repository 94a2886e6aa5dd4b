"""Running client/predict.py as a user does (a subprocess) and reading what it says.

Every test module under tests/client/ runs the script through `predict(...)`: the real entry point,
its argument parsing, its output and its exit status.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from harness.process import by_labels, scrape
from server.app import create_server
from tests.serving_fixtures import REPO, SAMPLES

PREDICT = REPO / "client" / "predict.py"


def predict(*args: str, script: Path = PREDICT, python_flags=(), prefix=(),
            env: dict | None = None) -> subprocess.CompletedProcess:
    """`python client/predict.py ARGS` from the repository root; `prefix` runs it under another
    command (setpriv), `env` adds variables to the environment."""
    return subprocess.run([*prefix, sys.executable, *python_flags, str(script), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def start_predict(*args: str) -> subprocess.Popen:
    """`python client/predict.py ARGS` started, not waited for (stdout and stderr piped, text)."""
    return subprocess.Popen([sys.executable, str(PREDICT), *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def sample_copies(folder: Path, n: int) -> list[Path]:
    """`folder` filled with `n` copies of the sample images, named 0000.png ... in order."""
    folder.mkdir()
    samples = sorted(SAMPLES.glob("*.png"))
    files = [folder / f"{i:04d}.png" for i in range(n)]
    for i, file in enumerate(files):
        shutil.copy(samples[i % len(samples)], file)
    return files


def requests_by_code(metrics_port: int) -> dict[str, float]:
    """fmnist.v1 Classify requests so far by status code, from a server's /metrics."""
    counts = by_labels(scrape(metrics_port), "fmnist_requests_total", "protocol", "code")
    return {code: n for (protocol, code), n in counts.items() if protocol == "fmnist.v1"}


def one_line_error(out: subprocess.CompletedProcess, rc: int, *needles: str) -> str:
    """The one `error: ...` line on stderr, with exit status `rc` and each needle in it."""
    assert out.returncode == rc, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert "Traceback" not in out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(models_dir: Path, **kwargs):
    """A started loopback server on `models_dir` (create_server's keywords; port 0 by default)."""
    srv, _ = create_server(models_dir, **{"port": 0, "device": "cpu", **kwargs})
    srv.start()
    try:
        yield srv
    finally:
        srv.stop(0)
