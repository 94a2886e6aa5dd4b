"""gRPC transport settings: message limits, keepalive, connection lifetimes, and a deadline on
reading each request, so that idle or slow streams cost nothing and cannot starve real calls.

The server is grpc.aio: a call waiting for its request message is a suspended coroutine, not a
thread, so 200 streams that open and never send hold no worker. Each fmnist.v1 method is
registered as a client-streaming handler that reads exactly one message within
`request_read_timeout` seconds (DEADLINE_EXCEEDED otherwise), which bounds how long such a stream
is kept. For the client nothing changes: on the wire a unary call and a one-message client stream
are the same HTTP/2 exchange. For the server it costs nothing either, read as it is here, with
`context.read()` under an `asyncio.timeout`. Reading through the request iterator instead leaves an
async generator unfinished on every call, which asyncio finalizes with a task it schedules by
call_soon_threadsafe: a bare server (2 cores, 32 callers) spent 363 us of CPU a call that way,
286 this way, and 298 as a unary method.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from server.api.grpc.status import deadline_passed, fail
from server.dataplane import calls

CLIENT_PING_MS = 500  # closer pings from a client are strikes (3: grpc sends GOAWAY)
_OK = (None, grpc.StatusCode.OK)  # context.code() until a handler sets one, or set to OK


@dataclass(frozen=True)
class Transport:
    keepalive_seconds: float = 60.0  # the server pings an idle connection this often ...
    keepalive_timeout_seconds: float = 20.0  # ... and closes it when the ping goes unanswered
    max_connection_idle_seconds: float = 300.0  # connections without calls are closed (GOAWAY)
    max_connection_age_seconds: float = 0.0  # 0: connections live as long as they are used
    request_read_timeout_seconds: float = 10.0  # from the call's start to its request message
    max_connections: int = 1024  # open at once per port (gRPC, HTTP); more are closed as they come


def grpc_options(transport: Transport, max_message_bytes: int,
                 reuse_port: bool = False) -> list[tuple[str, int]]:
    """`reuse_port`: share the port with the other workers of --workers (SO_REUSEPORT; their
    parent has checked that no other program holds it, server/workers/ports.py)."""
    ms = lambda seconds: int(seconds * 1000)  # noqa: E731
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes),
               ("grpc.so_reuseport", int(reuse_port)),  # else a port in use is an error
               ("grpc.keepalive_time_ms", ms(transport.keepalive_seconds)),
               ("grpc.keepalive_timeout_ms", ms(transport.keepalive_timeout_seconds)),
               # how often a client may ping while no data flows (grpc's name for the pings
               # it receives): every second, as client/balancing.py does to find a dead link
               # within 2 s. At 10 s, a client whose only call was a health Watch got GOAWAY
               # ENHANCE_YOUR_CALM "too_many_pings" after 3 idle seconds and reconnected with
               # its keepalive doubled. Half a second, so that jitter is no strike.
               ("grpc.http2.min_ping_interval_without_data_ms", CLIENT_PING_MS),
               ("grpc.keepalive_permit_without_calls", 1),
               ("grpc.max_allowed_incoming_connections", transport.max_connections)]
    if transport.max_connection_idle_seconds > 0:
        options.append(("grpc.max_connection_idle_ms", ms(transport.max_connection_idle_seconds)))
    if transport.max_connection_age_seconds > 0:
        options += [("grpc.max_connection_age_ms", ms(transport.max_connection_age_seconds)),
                    ("grpc.max_connection_age_grace_ms", 30_000)]
    return options


def unary_handler(behavior, request_deserializer, response_serializer,
                  read_timeout: float) -> grpc.RpcMethodHandler:
    """A unary method whose request must arrive within `read_timeout` seconds."""

    async def handler(unused_requests, context):
        call = begin(context)
        try:
            response = await read_and_answer(context, call)
            if context.code() not in _OK:  # status.fail set an error: end the call Trailers-Only
                await _end_trailers_only(context)
            return response
        finally:
            calls.end(call)

    async def read_and_answer(context, call):
        try:
            async with asyncio.timeout(read_timeout):  # a timer, not a task as wait_for makes
                request = await context.read()  # not the iterator: see the module docstring
        except TimeoutError:
            return fail(context, grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"the request message did not arrive within {read_timeout:g} s of "
                        "the call's start (--request-read-timeout)")
        except DecodeError:  # not this method's message (else: UNKNOWN, "Unexpected")
            return fail(context, grpc.StatusCode.INVALID_ARGUMENT,
                        "the request message is not valid protobuf for this method")
        if request is grpc.aio.EOF:
            await _stop_if_open_but_empty(context)
            return fail(context, grpc.StatusCode.INVALID_ARGUMENT,
                        "the call sent no request message")
        call.phases.append(("read", call.started, time.time_ns()))
        _stop_if_ended(context)
        response = await behavior(request, context)
        _stop_if_ended(context)
        return response

    return grpc.stream_unary_rpc_method_handler(handler, request_deserializer=request_deserializer,
                                                response_serializer=response_serializer)


async def _end_trailers_only(context) -> None:
    """Send the status set by status.fail as the call's only answer (Trailers-Only).

    Returned after set_code, a grpc.aio unary handler sends response headers and an empty
    message before the status; a client's retry policy commits a call once headers arrive, so
    an UNAVAILABLE from a draining server (or a RESOURCE_EXHAUSTED with grpc-retry-pushback-ms)
    was never replayed on another replica (measured with harness/fleet.py: every refusal of a
    drain reached the caller). context.abort sends the status alone. Its exception is dropped
    here with its traceback, so it holds no frame of this call: grpc keeps it on the call, and
    a traceback through the handler's frames would keep the request in a reference cycle."""
    try:
        await context.abort(context.code(), context.details())
    except grpc.aio.AbortError as e:
        e.__traceback__ = None


def begin(context) -> calls.Call:
    """The call's record (server/dataplane/calls.py), from its metadata (x-request-id,
    traceparent, tracestate); its answer, whatever it is, carries the request id as trailing
    metadata."""
    call = calls.begin(calls.carrier(context.invocation_metadata()))
    context.set_trailing_metadata(((calls.REQUEST_ID, call.id),))
    return call


def _stop_if_ended(context) -> None:
    """Raise CancelledError, so that the handler sends no status, when grpc has already ended
    the call: a status sent on an ended call fails, and grpc.aio never frees a failed batch
    (~400 B of native heap each; grpc/grpc#43360).

    Ended means: the deadline passed (grpc ends the call with DEADLINE_EXCEEDED itself), or grpc
    cancelled this handler's task (the client cancelled, or its message was over
    --max-message-bytes and it already has RESOURCE_EXHAUSTED). The task counts such a cancel
    (Task.cancelling) even when the CancelledError itself was lost, as it is when the read it
    interrupted finished at the same moment."""
    if deadline_passed(context) or asyncio.current_task().cancelling():
        raise asyncio.CancelledError


async def _stop_if_open_but_empty(context) -> None:
    """For a stream that ended without a request: `_stop_if_ended`, and when neither sign says
    the call ended, ask it directly. It may be open (the client half-closed without sending a
    request, and is owed INVALID_ARGUMENT): sending the initial metadata fails only on an ended
    call, and as the smallest batch there is, it loses 80 B where a status would lose 400."""
    _stop_if_ended(context)
    try:
        await context.send_initial_metadata(())
    except Exception:  # noqa: BLE001 - grpc's ExecuteBatchError is private; any failure: ended
        raise asyncio.CancelledError from None


def service_handler(service_name: str, servicer, messages, read_timeout: float):
    """The generic handler of `service_name`, every method of `messages` (a pb module's service
    descriptor) bound to the same-named coroutine method of `servicer`."""
    service = messages.DESCRIPTOR.services_by_name[service_name.rsplit(".", 1)[-1]]
    handlers = {}
    for method in service.methods:
        request_class = messages.__dict__[method.input_type.name]
        handlers[method.name] = unary_handler(
            getattr(servicer, method.name), request_class.FromString,
            lambda message: message.SerializeToString(), read_timeout)
    return grpc.method_handlers_generic_handler(service_name, handlers)
