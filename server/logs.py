"""Log lines as text (for people) or JSON (one object per line, for machines): `--log-format`;
`Throttle` for events that come in floods.

A line logged while a request is served (in its task: its adapter's error lines, the dataplane's)
carries that request's id, and its trace id when tracing is on: `CALL` holds the request's call
record (server/dataplane/calls.py sets it), and the handler's filter copies its `id` and
`trace_id` onto the record as `request_id` and `trace_id`: JSON fields, or a `[request_id=...
trace_id=...]` suffix on a text line.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import threading
import time

FORMATS = ("text", "json")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
CALL: contextvars.ContextVar = contextvars.ContextVar("fmnist_call", default=None)


class CallFields(logging.Filter):
    """Copies the current request's id (and trace id, when it has one) onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        call = CALL.get()
        if call is not None and not hasattr(record, "request_id"):
            record.request_id = call.id
            if call.trace_id:
                record.trace_id = call.trace_id
        return True


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, then `[request_id=... trace_id=...]` when it has them."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [f"{key}={getattr(record, key)}" for key in ("request_id", "trace_id")
               if getattr(record, key, None)]
        return f"{line} [{' '.join(ids)}]" if ids else line


class JsonFormatter(logging.Formatter):
    """{"time", "level", "logger", "message", any `extra=` fields, "exception"} on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                       + f".{int(record.msecs):03d}Z",
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(fmt: str = "text", level: str = "INFO", stream=None) -> None:
    """Configure the root logger once: one handler on stderr in the chosen format."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(CallFields())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class Throttle:
    """At most one log line per `interval` seconds for an event that can come in floods (malformed
    HTTP requests, connections over the cap, failed accepts): the first of each interval is
    logged, with how many like it were not since the last line. Thread-safe."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0):
        self._log = logger
        self._interval = interval
        self._lock = threading.Lock()
        self._next = 0.0
        self._quiet = 0

    def log(self, level: int, message: str, *args, **kwargs) -> bool:
        """Log `message % args` unless a line went out less than `interval` seconds ago; True
        when it was logged."""
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self._quiet += 1
                return False
            quiet, self._quiet, self._next = self._quiet, 0, now + self._interval
        if quiet:
            message += f" (and {quiet:,} more like it since the last such line)"
        self._log.log(level, message, *args, **kwargs)
        return True
