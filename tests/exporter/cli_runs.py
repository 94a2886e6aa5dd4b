"""`python -m exporter` run as a user runs it, and readers for what a run leaves behind.

Shared by the test files that observe the command line: each reads the log, the version folders,
report.json and the ONNX metadata the same way, from the outside.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO

EXPORTER = (sys.executable, "-m", "exporter")


def with_file_limit(limit: int, killed: bool) -> tuple[str, ...]:
    """The same entry point with RLIMIT_FSIZE set once its modules are imported (onnxruntime's
    start-up writes a large file of its own): a write past `limit` bytes then fails with EFBIG, as
    on a full disk, or, with `killed`, SIGXFSZ back at the kernel's default action (Python
    ignores it at start-up) kills the process in the middle of that write."""
    return (sys.executable, "-c",
            "import resource, runpy, signal, sys; import exporter.cli; "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            + ("signal.signal(signal.SIGXFSZ, signal.SIG_DFL); " if killed else "")
            + "runpy.run_module('exporter', run_name='__main__', alter_sys=True)")


def start_exporter(*args: str, env: dict | None = None, launcher: tuple[str, ...] = EXPORTER,
                   merge_output: bool = False) -> subprocess.Popen:
    """Start the exporter; `env` is added to this process's environment; `merge_output` sends
    stderr into stdout, in the order the lines were written. Runs on folders of their own may go
    side by side: most of a run is one core's imports and torch.onnx's warm-up."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([*launcher, *args], cwd=REPO, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT if merge_output else subprocess.PIPE,
                            text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    """Wait for a started run to end (killed when it runs past `timeout`)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_exporter(*args: str, env: dict | None = None, launcher: tuple[str, ...] = EXPORTER,
                 merge_output: bool = False) -> subprocess.CompletedProcess:
    """Run the exporter to its end."""
    return finish(start_exporter(*args, env=env, launcher=launcher, merge_output=merge_output))


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """The run's stderr lines, which must all be `error:` lines and no traceback."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith(("error: ", "python -m exporter: error: "))
                         for line in lines), result.stderr[-3000:]
    return lines


def entries(folder: Path) -> list[str]:
    """A folder's entries but the exporter's lock file (empty when the folder is absent)."""
    return sorted(p.name for p in folder.iterdir() if p.name != ".lock") if folder.is_dir() else []


@dataclass(frozen=True)
class Run:
    """One finished run, and the arch folder as that run left it (later runs add versions)."""

    result: subprocess.CompletedProcess
    artifacts: Path
    arch: str
    versions_after: list[str]

    @classmethod
    def of(cls, result: subprocess.CompletedProcess, artifacts: Path, arch: str) -> "Run":
        return cls(result, artifacts, arch, entries(artifacts / "models" / arch))

    @property
    def out(self) -> str:
        return self.result.stdout

    @property
    def err(self) -> str:
        return self.result.stderr

    def folder(self, version: int) -> Path:
        return self.artifacts / "models" / self.arch / str(version)

    def report(self, version: int) -> dict:
        return json.loads((self.folder(version) / "report.json").read_text())

    def variant(self, version: int, name: str) -> dict:
        (found,) = [v for v in self.report(version)["variants"] if v["variant"] == name]
        return found
