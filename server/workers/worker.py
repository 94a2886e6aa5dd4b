"""A worker of --workers: an ordinary `python -m server` that its parent started with
FMNIST_SERVE_WORKER set, and that talks to the parent over an inherited socket (JSON lines).

To the parent: {"started": true, "serving": ..., "metrics_port": ..., "models": ...} once it
serves, {"serving": ...} when its own health changes (models come or go), {"final_metrics": ...}
as it exits. From the parent: {"gate": true|false} (every worker serves, or not: the server's
own health names follow it) and {"retire": true} (replaced: hand the connections to the others,
then stop). When the socket closes the parent is gone, and the worker drains and exits.

Retiring loses no request: the worker stops listening (new connections go to the other
workers), keeps serving its connections until --max-connection-age-seconds has sent each one a
GOAWAY (its clients move on, and streams that cross the GOAWAY are still served), then stops as
on SIGTERM, with nothing left to refuse. grpc's own stop would send the GOAWAY itself, but cancels
the streams that cross it (measured: 1-30 CANCELLED per stop at ~2,000 calls/s).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading

from prometheus_client import generate_latest

from server.workers import ports

log = logging.getLogger(__name__)

ENV = "FMNIST_SERVE_WORKER"  # "<slot>:<fd>"
HTTP_ENV = "FMNIST_SERVE_HTTP_FDS"  # "<fd>,<fd>": the HTTP port's sockets, bound by the parent
AGE_JITTER = 1.1  # grpc moves each connection's max age by up to 10%


def is_worker() -> bool:
    return ENV in os.environ


def slot() -> int | None:
    """This worker's slot (0, 1, ...); None outside --workers."""
    return int(os.environ[ENV].split(":")[0]) if is_worker() else None


def http_sockets() -> tuple[socket.socket, ...]:
    """The HTTP port's sockets this worker inherited from its parent (none without HTTP)."""
    fds = os.environ.get(HTTP_ENV, "")
    return tuple(socket.socket(fileno=int(fd)) for fd in fds.split(",") if fd)


class Link:
    """The worker's end of the socket to its parent."""

    def __init__(self) -> None:
        slot, fd = os.environ[ENV].split(":")
        self.slot = int(slot)
        self.sock = socket.socket(fileno=int(fd))
        self._lock = threading.Lock()

    def send(self, **message) -> None:
        data = (json.dumps(message) + "\n").encode()
        with self._lock:
            try:
                self.sock.sendall(data)
            except OSError:  # the parent is gone; the reader sees it and drains
                pass

    def messages(self):
        with self.sock.makefile("r", encoding="utf-8") as lines:
            for line in lines:
                yield json.loads(line)


def tag_logs() -> None:
    """Prefix this process's log lines with "[worker N]" (and add "worker": N to JSON ones)."""
    slot = int(os.environ[ENV].split(":")[0])

    def tag(record: logging.LogRecord) -> bool:
        if not hasattr(record, "worker"):
            record.worker = slot
            record.msg = f"[worker {slot}] {record.msg}"
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(tag)


def serve(server, stop: threading.Event, grace: float, max_age: float) -> int:
    """Serve until SIGTERM (`stop`), a retire from the parent, or the parent's end; then stop
    within `grace` and hand the final metrics over. Exit status 0, like a lone server's."""
    link = Link()
    done = threading.Event()
    threading.Thread(target=lambda: (stop.wait(), done.set()), name="worker-stop",
                     daemon=True).start()
    threading.Thread(target=_obey, args=(link, server, stop, done, max_age), name="worker-link",
                     daemon=True).start()
    serving = [server.ready]

    def on_change() -> None:
        if server.ready != serving[0]:
            serving[0] = server.ready
            link.send(serving=serving[0])

    server.core.served.on_change.append(on_change)
    models = server.core.list_models()
    link.send(started=True, serving=server.ready, pid=os.getpid(),
              metrics_port=server.metrics.port if server.metrics else None,
              models=[f"{m.name} v{m.version} [{m.provider}]" for m in models])
    while not done.wait(0.25):  # short steps: see server/cli.py SIGNAL_POLL
        pass
    finished = server.stop(grace)
    if server.metrics is not None:
        link.send(final_metrics=generate_latest(server.metrics.registry).decode())
    log.info("stopped%s", "" if finished else " (some requests were cut off by the grace period)")
    return 0


def _obey(link: Link, server, stop: threading.Event, done: threading.Event,
          max_age: float) -> None:
    """The parent's messages, until it retires this worker or its socket closes."""
    for message in link.messages():
        if "gate" in message and not done.is_set():  # once stopping, its loop may be closed
            server.set_gate(message["gate"])
            log.info("health %s: the parent's gate is %s", "SERVING" if message["gate"] else
                     "NOT_SERVING", "open" if message["gate"] else "closed")
        if message.get("retire"):
            _retire(server, stop, max_age)
            break
    else:
        if not stop.is_set():
            log.warning("the parent process is gone: draining")
    done.set()


def _retire(server, stop: threading.Event, max_age: float) -> None:
    listening = {server.port, server.http_port} - {None}
    closed = server.stop_accepting_http() + ports.close_listeners({server.port})
    wait = max_age * AGE_JITTER + 1
    log.info("retiring: no new connections on port(s) %s (%d socket(s) shut); serving those "
             "it has for %.1f s, while --max-connection-age-seconds %g moves the gRPC ones to "
             "the other workers", ", ".join(map(str, sorted(listening))), closed, wait, max_age)
    stop.wait(wait)  # a SIGTERM meanwhile stops at once
