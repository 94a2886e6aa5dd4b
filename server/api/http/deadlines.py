"""A request's deadline over HTTP, for the core as a gRPC deadline is: `X-Request-Timeout:
<seconds>` on any route, and for v2 inference also Triton's `timeout` parameter; the sooner wins.
It counts from when the request's headers arrived (the middleware notes that time)."""

from __future__ import annotations

import math
import time

from aiohttp import web

from server.errors import InvalidRequest, shorten

TIMEOUT_HEADER = "X-Request-Timeout"
STARTED = web.RequestKey("started", float)  # time.monotonic() when the request came in


def deadline(request: web.Request, timeout: float | None = None) -> float | None:
    """The request's deadline in time.monotonic() seconds, or None; `timeout` is the body's own
    (seconds)."""
    timeouts = [t for t in (_header(request), timeout) if t is not None]
    if not timeouts:
        return None
    return request.get(STARTED, time.monotonic()) + min(timeouts)


def _header(request: web.Request) -> float | None:
    text = request.headers.get(TIMEOUT_HEADER)
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise InvalidRequest(f"{TIMEOUT_HEADER} must be a number of seconds > 0, got "
                             f"{shorten(text)}")
    return seconds
