"""The parent of --workers: it holds the port, starts N workers (`python -m server` processes
that share the port), opens their health gate while every one serves, adds up their metrics,
replaces a worker that dies or outgrows --max-worker-rss-mb, and on SIGTERM drains them all.

Start-up: the port is checked and held (ports.py), /metrics is bound, then worker 0 starts
alone, so a configuration that cannot start fails once, with the worker's own error, exit 1;
then the others start together. Each worker listens only once its models are loaded, so
connections reach only workers that can answer: it binds the gRPC port then (SO_REUSEPORT), and
listens on the HTTP port's sockets, which the parent bound and every worker inherits (one queue
for all: a worker that stops accepting leaves the connections queued to the others).

Health: every worker answers health on the shared port, and its "" and fmnist.v1.Classifier
names are SERVING only while the parent's gate is open: while every slot's worker is started and
serving. A readiness probe on the public port sees SERVING only then, whichever worker it
reaches; per-model names are each worker's own.

Replacing: a worker that exits unasked is logged and started again (at once when it had served;
after 1, 2, 4 ... 30 s when it died before it served). One over --max-worker-rss-mb is replaced
without losing a request: its replacement starts and serves first, then the old one retires
(worker.py). One replacement at a time, so at most N + 1 workers exist.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry

from server.api.binding import bracketed
from server.api.http.listener import bind_sockets
from server.errors import StartupError
from server.workers import ports, worker
from server.workers.cores import Plan
from server.metrics.exposition import serve
from server.metrics.summing import MetricsSum
from server.metrics.workers import WorkersCollector

log = logging.getLogger(__name__)

RECYCLE_MAX_AGE = 30.0  # --max-connection-age-seconds of workers that may be recycled, when 0
TICK = 1.0  # seconds between checks of the workers' memory and of pending restarts
MAX_BACKOFF = 30.0
STOP_MARGIN = 5.0  # after --grace, before workers that have not exited are killed


@dataclass(eq=False)
class Worker:
    slot: int
    proc: subprocess.Popen
    sock: socket.socket
    started: bool = False
    serving: bool = False
    retiring: bool = False
    gate: bool = False  # as last sent to it
    metrics_port: int | None = None
    models: list[str] = field(default_factory=list)
    final_metrics: str | None = None

    @property
    def name(self) -> str:
        return f"worker {self.slot} (pid {self.proc.pid})"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, **message) -> None:
        try:
            self.sock.sendall((json.dumps(message) + "\n").encode())
        except OSError:  # it is exiting: its reader reports that
            pass

    def rss_mb(self) -> float | None:
        """Its resident memory (MiB); None once it is gone."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        return next((int(line.split()[1]) / 1024 for line in status.splitlines()
                     if line.startswith("VmRSS:")), None)


def supervises(args: argparse.Namespace, plan: Plan) -> bool:
    """Whether this process is the parent of workers: more than one, or any that may be recycled."""
    return not worker.is_worker() and (plan.workers > 1 or args.max_worker_rss_mb is not None)


def supervise(args: argparse.Namespace, plan: Plan, argv: list[str]) -> int:
    """Run the workers until SIGTERM/SIGINT; 0 when every worker stopped cleanly, 1 otherwise
    (also when they cannot start)."""
    held = []
    try:
        grpc_held, port = ports.hold(args.host, args.port)
        held += grpc_held
        http, http_port = (bind_sockets(args.host, args.http_port, listen=False)
                           if args.http_port else ([], 0))
        held += http
        parent = Supervisor(args, plan, argv, (port, http_port), http)
        parent.serve_metrics()
    except StartupError as e:
        ports.release(held)
        log.error("cannot start: %s", e)
        return 1
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: parent.events.put(("signal", None, signum)))
    try:
        return parent.run()
    finally:
        parent.close()
        ports.release(held)


class Supervisor:
    """The parent's state: the slots (one per worker asked for) and every live worker process,
    changed only by `run`'s loop, one event at a time (a worker's message or exit, a signal, the
    tick)."""

    def __init__(self, args: argparse.Namespace, plan: Plan, argv: list[str],
                 ports: tuple[int, int], http: list[socket.socket]):
        """`ports`: the gRPC and HTTP ports held (HTTP 0: none); `http`: the HTTP port's
        sockets, bound, which every worker inherits and listens on."""
        self.args, self.plan, (self.port, http_port) = args, plan, ports
        self.http = http
        self.events: queue.SimpleQueue = queue.SimpleQueue()  # put() is safe in signal handlers
        self.slots: list[Worker | None] = [None] * plan.workers
        self.workers: list[Worker] = []  # every live process, also replacements and retiring ones
        self.replacing: Worker | None = None  # starting to take over from an outgrown one
        self.pending: dict[int, float] = {}  # slot -> when to start it again
        self.failures = Counter()  # slot -> deaths in a row before serving
        self.restarts = Counter()  # reason -> count, for /metrics
        self.sum = MetricsSum()
        self.started = False  # every slot served once: start-up is over
        self.stop_at: float | None = None
        self.status = 0
        self.warned_fresh = False
        self.gate = False  # every worker's health gate, as last decided
        self._lock = threading.Lock()  # self.workers, read by /metrics
        self._http = None
        max_age = args.max_connection_age_seconds
        self.overrides = ["--workers", "1", "--port", str(self.port),
                          "--http-port", str(http_port),
                          "--intra-op-threads", str(plan.intra_op_threads),
                          "--decode-threads", str(plan.decode_threads)]
        if args.max_worker_rss_mb is not None and max_age == 0:
            self.overrides += ["--max-connection-age-seconds", f"{RECYCLE_MAX_AGE:g}"]
        self.argv = argv

    # --- the loop ------------------------------------------------------------------------------

    def run(self) -> int:
        self._spawn(0)
        while self.workers or not self.stop_at:
            try:
                kind, w, payload = self.events.get(timeout=TICK)
            except queue.Empty:
                self._tick()
                continue
            if kind == "signal":
                self._on_signal(payload)
            elif kind == "message":
                self._on_message(w, payload)
            else:
                self._on_exit(w)
            self._update_gate()
        log.info("stopped" if self.status == 0 else "stopped (a worker did not stop cleanly)")
        return self.status

    def _on_message(self, w: Worker, message: dict) -> None:
        if "final_metrics" in message:
            w.final_metrics = message["final_metrics"]
        if "serving" in message:
            w.serving = message["serving"]
        if message.get("started"):
            w.started, w.metrics_port, w.models = True, message["metrics_port"], message["models"]
            log.info("%s started: metrics on 127.0.0.1:%s", w.name, w.metrics_port,
                     extra={"worker_pid": w.proc.pid, "worker_metrics_port": w.metrics_port})
            self._on_started(w)

    def _on_started(self, w: Worker) -> None:
        self.failures[w.slot] = 0
        if w is self.replacing:
            old, self.slots[w.slot], self.replacing = self.slots[w.slot], w, None
            self._check_fresh(w)
            if old is not None and not self.stop_at:
                log.info("%s serves: retiring %s", w.name, old.name)
                old.retiring = True
                old.send(retire=True)
        if not self.started and not self.stop_at and len(self.workers) == 1:
            for slot in range(1, len(self.slots)):  # worker 0 could start: the others now
                self._spawn(slot)
        if not self.started and all(s is not None and s.started for s in self.slots):
            self.started = True
            self._update_gate()
            self._log_listening()

    def _on_exit(self, w: Worker) -> None:
        code = w.proc.wait()
        how = f"exit status {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        with self._lock:
            self.workers.remove(w)
        self.sum.retire(w.proc.pid, w.final_metrics)
        if self.stop_at:  # one still loading has nothing to drain: SIGTERM ends it at once
            if code != 0 and (w.started or code != -signal.SIGTERM):
                self.status = 1
            log.info("%s exited (%s)", w.name, how)
        elif w.retiring:
            log.info("%s retired (%s)", w.name, how)
        elif not self.started:
            log.error("cannot start: %s exited (%s) before it served (its log says why)", w.name,
                      how)
            self.status = 1
            self._stop_all()
        else:
            self._replace_dead(w, how)

    def _replace_dead(self, w: Worker, how: str) -> None:
        self.restarts["exited"] += 1
        if w is self.replacing:
            self.replacing = None
        elif self.slots[w.slot] is w:
            self.slots[w.slot] = None
            if self.replacing is not None and self.replacing.slot == w.slot:
                log.warning("%s exited (%s): its replacement, starting, takes over", w.name, how)
                return
        else:
            return
        if w.started:
            delay = 0.0
        else:
            self.failures[w.slot] += 1
            delay = min(2.0 ** (self.failures[w.slot] - 1), MAX_BACKOFF)
        log.warning("%s exited (%s): starting another%s", w.name, how,
                    f" in {delay:g} s (it died before serving)" if delay else "")
        if w.slot not in self.pending and self.slots[w.slot] is None:
            self.pending[w.slot] = time.monotonic() + delay

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.stop_at:
            log.warning("%s received again: stopping the workers now", name)
            self.status = 1
            self._signal_all(signal.SIGTERM)  # a worker's second signal: it exits at once
            return
        log.info("%s received: draining %d worker(s)", name, len(self.workers))
        self._stop_all()

    def _stop_all(self) -> None:
        """Drain every worker. The parent's copy of the HTTP sockets goes at once: the port
        stops listening when the last worker closes its own, as a lone server's would."""
        self.stop_at = time.monotonic() + self.args.grace + STOP_MARGIN
        self.pending.clear()
        self._signal_all(signal.SIGTERM)
        ports.release(self.http)

    def _tick(self) -> None:
        now = time.monotonic()
        if self.stop_at and now > self.stop_at:
            log.warning("workers still running %g s after --grace: killing them", STOP_MARGIN)
            self.status = 1
            self._signal_all(signal.SIGKILL)
            return
        for slot, when in list(self.pending.items()):
            if when <= now:
                del self.pending[slot]
                self._spawn(slot)
        self._check_memory()

    # --- memory --------------------------------------------------------------------------------

    def _check_memory(self) -> None:
        """Start replacing the first worker over --max-worker-rss-mb, one at a time."""
        limit = self.args.max_worker_rss_mb
        busy = self.replacing is not None or any(w.retiring for w in self.workers)
        if limit is None or busy or not self.started or self.stop_at:
            return
        sizes = [(w.rss_mb() or 0.0, w) for w in self.slots if w is not None and w.started]
        rss, w = max(sizes, key=lambda size: size[0], default=(0.0, None))
        if rss > limit:
            log.info("%s uses %.0f MiB, over --max-worker-rss-mb %d: starting its replacement",
                     w.name, rss, limit)
            self.restarts["rss"] += 1
            self.replacing = self._spawn(w.slot, owner=False)

    def _check_fresh(self, w: Worker) -> None:
        rss, limit = w.rss_mb(), self.args.max_worker_rss_mb
        if rss is not None and rss > limit and not self.warned_fresh:
            self.warned_fresh = True
            log.warning("a freshly started worker already uses %.0f MiB, over "
                        "--max-worker-rss-mb %d: workers will be replaced one after another; "
                        "raise the limit", rss, limit)

    # --- workers -------------------------------------------------------------------------------

    def _spawn(self, slot: int, owner: bool = True) -> Worker:
        mine, theirs = socket.socketpair()
        http = [s.fileno() for s in self.http]
        env = {**os.environ, worker.ENV: f"{slot}:{theirs.fileno()}",
               worker.HTTP_ENV: ",".join(map(str, http))}
        proc = subprocess.Popen([sys.executable, "-m", "server", *self.argv, *self.overrides],
                                env=env, pass_fds=(theirs.fileno(), *http),
                                start_new_session=True)
        theirs.close()
        w = Worker(slot, proc, mine)
        with self._lock:
            self.workers.append(w)
        if owner:
            self.slots[slot] = w
        threading.Thread(target=self._read, args=(w,), name=f"worker-{slot}-link",
                         daemon=True).start()
        return w

    def _read(self, w: Worker) -> None:
        with w.sock.makefile("r", encoding="utf-8") as lines:
            for line in lines:
                self.events.put(("message", w, json.loads(line)))
        self.events.put(("exit", w, None))

    def _signal_all(self, signum: int) -> None:
        for w in list(self.workers):
            try:
                w.proc.send_signal(signum)
            except ProcessLookupError:
                pass

    def _update_gate(self) -> None:
        """Open every worker's health gate while each slot's worker is started and serving."""
        waiting = [slot for slot, s in enumerate(self.slots)
                   if s is None or not (s.started and s.serving)]
        gate = self.started and not self.stop_at and not waiting
        if self.started and gate != self.gate:  # say so when it changes
            self.gate = gate
            if gate:
                log.info("health SERVING: every worker serves")
            else:
                log.info("health NOT_SERVING: %s", "stopping" if self.stop_at else
                         f"worker(s) {', '.join(map(str, waiting))} not serving")
        if self.stop_at:
            return  # draining workers close their health themselves, and then their loop
        for w in self.workers:
            if w.started and not w.retiring and w.gate != gate:
                w.gate = gate
                w.send(gate=gate)

    def _log_listening(self) -> None:
        models = self.slots[0].models
        serving = all(s.serving for s in self.slots)
        log.info("listening on %s:%d (health %s) with %d model(s): %s; %d workers",
                 bracketed(self.args.host), self.port,
                 "SERVING" if serving else "NOT_SERVING until a model is served", len(models),
                 ", ".join(models) or "none", len(self.slots),
                 extra={"host": self.args.host, "port": self.port})

    # --- metrics -------------------------------------------------------------------------------

    def serve_metrics(self) -> None:
        """/metrics on --host:--metrics-port (0: none): the workers' added up, and the parent's."""
        if not self.args.metrics_port:
            return
        registry = CollectorRegistry()
        registry.register(WorkersCollector(self))
        self._http = serve(registry, self.args.host, self.args.metrics_port)
        log.info("metrics of every worker on http://%s:%d/metrics", self.args.host,
                 self._http.port, extra={"metrics_port": self._http.port})

    def live_workers(self) -> list[Worker]:
        """Every worker process now (/metrics reads them from its own thread)."""
        with self._lock:
            return list(self.workers)

    def close(self) -> None:
        if self._http is not None:
            self._http.stop()
