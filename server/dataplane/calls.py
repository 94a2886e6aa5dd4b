"""A request's call record: its id, the trace context its caller sent, when it arrived and how
long reading it took. Each adapter begins one as a request arrives, from a neutral carrier (a
mapping of lower-case header or metadata names to values), and ends it once answered; meanwhile
it is the current call of the request's task, which the dataplane (its spans: tracing.py) and
the log lines (server/logs.py) read.

    call = calls.begin({"x-request-id": "abc-1", "traceparent": "00-4bf9...-00f0...-01"})
    context.set_trailing_metadata(((calls.REQUEST_ID, call.id),))   # the answer carries it
    started = time.time_ns(); body = await read(); calls.phase("read", started)
    ...
    calls.end(call)

Request ids: the caller's `X-Request-Id` (gRPC metadata `x-request-id`) when it is 1 to 128
characters of letters, digits and `-._:/+=@` (what a log line, a header and a trace attribute
can all hold as they are), else one made up here (32 hex digits); either way every answer of
fmnist.v1, KServe v2 and HTTP carries it back.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Iterable, Mapping

from server.logs import CALL

REQUEST_ID = "x-request-id"
TRACEPARENT = "traceparent"  # W3C Trace Context
TRACESTATE = "tracestate"
HEADERS = (REQUEST_ID, TRACEPARENT, TRACESTATE)  # what the adapters put in a carrier
MAX_ID = 128
_ID = re.compile(r"[A-Za-z0-9\-._:/+=@]{1,%d}" % MAX_ID)
_IDS = random.Random(os.urandom(32))


class Call:
    __slots__ = ("id", "headers", "started", "phases", "trace_id", "_token")

    def __init__(self, request_id: str, headers: Mapping[str, str], started: int):
        self.id = request_id
        self.headers = headers  # the carrier: traceparent, tracestate (lower-case names)
        self.started = started  # time.time_ns() as the request arrived
        self.phases: list[tuple[str, int, int]] = []  # (name, start, end) in time.time_ns()
        self.trace_id = ""  # hex, once its request span is made (tracing on)
        self._token = None


def begin(headers: Mapping[str, str]) -> Call:
    """The call of a request that has just arrived, current from now on in this task."""
    given = headers.get(REQUEST_ID)
    call = Call(given if given is not None and _ID.fullmatch(given) else new_id(), headers,
                time.time_ns())
    call._token = CALL.set(call)
    return call


def end(call: Call) -> None:
    """The request is answered: no longer current."""
    try:
        CALL.reset(call._token)
    except ValueError:  # ended in another context than it began in: nothing to restore
        CALL.set(None)


def current() -> Call | None:
    return CALL.get()


def phase(name: str, started: int) -> None:
    """Note that the current call's `name` (reading, parsing its message) ran from `started`
    (time.time_ns()) until now; its request span shows it (tracing on)."""
    call = CALL.get()
    if call is not None:
        call.phases.append((name, started, time.time_ns()))


def carrier(pairs: Iterable) -> dict[str, str]:
    """The carrier of (name, value) pairs (gRPC metadata, HTTP headers): the HEADERS among them,
    names in lower case."""
    out = {}
    for item in pairs or ():
        name = item[0].lower()
        if name in HEADERS and isinstance(item[1], str):
            out[name] = item[1]
    return out


def new_id() -> str:
    """32 hex digits from this process's own generator, seeded once from os.urandom. Not
    os.urandom per request: it releases the GIL around its getrandom() call, and the event loop
    then waits for the GIL behind the batcher's and the decoders' threads (measured: 25-45 us of
    CPU per request, 10-17% of lenet_bn's HTTP throughput at 32 callers on 2 cores). An id
    names a request in logs and traces; it guards nothing, so it needs no cryptographic
    source."""
    return f"{_IDS.getrandbits(128):032x}"
