"""A real `python -m server` process: its log collected line by line, its port and its metrics
read from what it says and serves, its memory and file descriptors from /proc, and waits on
those observable states (never sleeps that guess how long something takes)."""

from __future__ import annotations

import atexit
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from harness import REPO

LISTENING = re.compile(r"listening on (\S+):(\d+)")


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick for a socket bound to port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_STARTED: list["ServerProcess"] = []


@atexit.register
def _stop_leftovers() -> None:
    """A test that failed before stopping its server leaves no process behind the run."""
    for server in _STARTED:
        if server.proc.poll() is None:
            server.proc.kill()


class ServerProcess:
    """`python -m server ...` with its stderr collected line by line (so the pipe never fills).
    Metrics are off (--metrics-port 0) unless asked for (`metrics=True` picks a free port, kept
    in `metrics_port`): the default port is one per machine. HTTP likewise: off (--http-port 0)
    unless `http=True` picks a free port, kept in `http_port`."""

    def __init__(self, *args: str, metrics: bool = False, http: bool = False,
                 entry: tuple[str, ...] = ("-m", "server"),
                 env: dict[str, str] | None = None):
        self.metrics_port = free_port() if metrics else 0
        metrics_flags = (() if "--metrics-port" in args
                         else ("--metrics-port", str(self.metrics_port)))
        self.http_port = free_port() if http else 0
        http_flags = () if "--http-port" in args else ("--http-port", str(self.http_port))
        self.proc = subprocess.Popen([sys.executable, *entry, *args, *metrics_flags, *http_flags],
                                     cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=None if env is None else {**os.environ, **env})
        _STARTED.append(self)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        """Stop it (SIGTERM, then SIGKILL) if the test left it running."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._reader.join(10)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for_port(self, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if m := LISTENING.search(line):
                    return int(m.group(2))
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.proc.kill()
        raise AssertionError(f"the server did not log its port:\n{self.log}")

    def count(self, text: str) -> int:
        """How many log lines so far hold `text`."""
        return sum(text in line for line in self.lines)

    def wait_for_log(self, text: str, timeout: float = 60, times: int = 1) -> None:
        """Until `times` log lines hold `text` (the server's own account of a state it reached)."""
        deadline = time.monotonic() + timeout
        while self.count(text) < times:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no log line with {text!r}:\n{self.log}")
            time.sleep(0.02)

    def wait_for_metric(self, name: str, predicate, timeout: float = 60) -> float:
        """Until the scraped `name` (with its labels) satisfies `predicate`; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = by_labels(scrape(self.metrics_port), name).get((), 0.0)
            if predicate(value):
                return value
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{name} stayed at {value}:\n{self.log}")
            time.sleep(0.05)

    def usage(self) -> "Usage":
        return usage(self.proc.pid)

    def wait(self, timeout: float = 60) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(10)
        return rc


def scrape(port: int) -> dict[str, list]:
    """/metrics as {sample name: [(labels, value), ...]}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def by_labels(samples: dict, name: str, *keys: str) -> dict[tuple, float]:
    """The samples of `name` as {label values in `keys` order: value}."""
    return {tuple(labels[k] for k in keys): value for labels, value in samples.get(name, [])}


@dataclass(frozen=True)
class Usage:
    rss_mb: float
    fds: int


def usage(pid: int) -> Usage:
    """A process's resident memory and open file descriptors now (from /proc)."""
    with open(f"/proc/{pid}/status") as status:
        rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return Usage(rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd")))
