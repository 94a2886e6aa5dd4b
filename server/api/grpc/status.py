"""What every servicer shares at the gRPC boundary: domain errors -> status codes, deadlines.

Both fmnist.v1 (server/api/grpc/classifier.py) and KServe v2 (server/api/grpc/kserve.py) wrap each method in
`map_errors`, so one ServingError travels as the same status code and message whichever API the
request came in by. Its log lines go to the logger of the servicer's module.
"""

from __future__ import annotations

import functools
import logging
import time

import grpc

from server.dataplane import calls
from server.errors import Cancelled, Overloaded, ServingError

_NO_DEADLINE = 1e8  # seconds; grpc reports "no deadline" as None or as a huge number
RETRY_PUSHBACK = "grpc-retry-pushback-ms"  # gRPC's retry trailer: clients with a retry policy obey it


def map_errors(method):
    """Domain errors -> their status code (with a retry hint for RESOURCE_EXHAUSTED); anything
    else -> INTERNAL with the traceback logged. A cancelled call (asyncio.CancelledError) passes.

    The call ends through `fail`, not `context.abort`: abort raises an exception that grpc keeps
    on the call, whose traceback holds this frame and the request in a reference cycle that only
    the garbage collector frees (under a flood of failing requests, hundreds of MB)."""
    log = logging.getLogger(method.__module__)

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except ServingError as e:
            (log.info if isinstance(e, Cancelled) else log.warning)(
                "%s from %s -> %s: %s", method.__name__, context.peer(), e.code, str(e),
                extra={"code": e.code})
            if isinstance(e, Overloaded) and e.retry_after is not None:
                context.set_trailing_metadata((
                    (RETRY_PUSHBACK, str(int(e.retry_after * 1000) + 1)), *request_id()))
            return fail(context, grpc.StatusCode[e.code], str(e))
        except Exception:
            log.exception("%s from %s failed unexpectedly -> INTERNAL", method.__name__,
                          context.peer(), extra={"code": "INTERNAL"})
            return fail(context, grpc.StatusCode.INTERNAL,
                        "internal server error (the server logged the details)")

    return wrapper


def request_id() -> tuple[tuple[str, str], ...]:
    """The current call's request id as trailing metadata (transport.begin set it first; set
    again beside any other trailer, as setting trailers replaces them)."""
    call = calls.current()
    return () if call is None else ((calls.REQUEST_ID, call.id),)


def fail(context, code: grpc.StatusCode, details: str) -> None:
    """End the call with `code`: grpc.aio sends that status (and no response message) when the
    handler returns after setting a non-OK code. Returns None, the handler's return value."""
    context.set_code(code)
    context.set_details(details)


def deadline_passed(context) -> bool:
    """Whether the caller's deadline has passed: grpc then ends the call with DEADLINE_EXCEEDED
    by itself, and a status the handler sends fails inside grpc (server/api/grpc/transport.py)."""
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


def deadline_of(context) -> float | None:
    """The caller's deadline in time.monotonic() seconds, or None."""
    remaining = context.time_remaining()
    return None if remaining is None or remaining > _NO_DEADLINE else time.monotonic() + remaining
