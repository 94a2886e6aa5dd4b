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
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from harness import REPO
from harness.wait import until

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
    unless `http=True` picks a free port, kept in `http_port`. `prefix` goes before the command
    (`ip netns exec NAME`: a replica of harness/fleet.py on its own host)."""

    def __init__(self, *args: str, metrics: bool = False, http: bool = False,
                 entry: tuple[str, ...] = ("-m", "server"),
                 env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()):
        self.metrics_port = free_port() if metrics else 0
        metrics_flags = (() if "--metrics-port" in args
                         else ("--metrics-port", str(self.metrics_port)))
        self.http_port = free_port() if http else 0
        http_flags = () if "--http-port" in args else ("--http-port", str(self.http_port))
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen([*prefix, sys.executable, *entry, *args, *metrics_flags,
                                      *http_flags],
                                     cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=None if env is None else {**os.environ, **env})
        _STARTED.append(self)
        self.lines: list[str] = []
        self.arrivals: list[float] = []  # time.monotonic() when each line was read
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
            self.arrivals.append(time.monotonic())
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for_port(self, timeout: float = 120) -> int:
        try:
            return self._until(self._port, timeout, "the server logging its port")
        except AssertionError:
            self.proc.kill()
            raise

    def _port(self) -> int | None:
        return next((int(m.group(2)) for line in self.lines if (m := LISTENING.search(line))),
                    None)

    def count(self, text: str) -> int:
        """How many log lines so far hold `text`."""
        return sum(text in line for line in self.lines)

    def arrived(self, text: str, after: float = 0.0) -> float | None:
        """time.monotonic() when the first line holding `text` read after `after` came."""
        return next((at for at, line in zip(self.arrivals, self.lines)
                     if at > after and text in line), None)

    def wait_for_log(self, text: str, timeout: float = 60, times: int = 1) -> None:
        """Until `times` log lines hold `text` (the server's own account of a state it reached)."""
        self._until(lambda: self.count(text) >= times, timeout,
                    f"{times} log line(s) with {text!r}")

    def wait_for_metric(self, name: str, predicate, timeout: float = 60) -> float:
        """Until the scraped `name` (with its labels) satisfies `predicate`; returns its value."""
        last = [0.0]

        def satisfied() -> bool:
            last[0] = by_labels(scrape(self.metrics_port), name).get((), 0.0)
            return predicate(last[0])

        try:
            self._until(satisfied, timeout, f"{name} reaching the value waited for")
        except AssertionError as e:
            raise AssertionError(f"{name} stayed at {last[0]}; {e}") from None
        return last[0]

    def _until(self, value, timeout: float, what: str):
        """harness.wait.until(value), failing at once if the server exits first; either failure
        carries the server's log."""
        def unless_exited():
            result = value()
            if not result and self.proc.poll() is not None:
                self._reader.join(10)  # what it wrote before exiting, read to the end
                if not (result := value()):
                    raise AssertionError(f"the server exited (status {self.proc.returncode}) "
                                         f"before {what}")
            return result

        try:
            return until(unless_exited, timeout, what, every=0.05)
        except AssertionError as e:
            raise AssertionError(f"{e}:\n{self.log}") from None

    def usage(self) -> "Usage":
        return usage(self.proc.pid)

    def wait(self, timeout: float = 60) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(10)
        return rc


def scrape(port: int, host: str = "127.0.0.1") -> dict[str, list]:
    """/metrics as {sample name: [(labels, value), ...]}."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
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


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (a --workers server's workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:  # gone meanwhile
                continue
            if re.search(rf"^PPid:\s+{pid}$", status, re.M):
                found.append(int(entry))
    return found


def pss_mb(pid: int) -> float:
    """A process's proportional set size (MiB): its private pages, and its share of pages other
    processes map too (/proc/PID/smaps_rollup)."""
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        return next(int(line.split()[1]) for line in rollup if line.startswith("Pss:")) / 1024


def tree_pss_mb(pid: int) -> float:
    """`pss_mb` of a process and its children together: what a --workers server costs."""
    return sum(pss_mb(p) for p in [pid, *children(pid)])
