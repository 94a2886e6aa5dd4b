"""Errors over HTTP: one table from the domain errors' status codes (server/errors.py) to HTTP
statuses, and the one error body every route answers with, {"error": "<message>"}.

The message is the ServingError's own, word for word what gRPC sends as its status details, so
a person reading either sees the same text. What only HTTP can get wrong (a body over the limit
or too slow, a missing token, a route that does not exist) is an `HttpError` with its status.
"""

from __future__ import annotations

import math

from aiohttp import web

from server.errors import Overloaded, ServingError

# server.errors' code names (grpc.StatusCode names) -> the HTTP status a client expects
STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "FAILED_PRECONDITION": 400,  # a load whose newest version cannot be served (Triton: 400)
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,  # the client went away (nginx's code); nobody reads it
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
INTERNAL_MESSAGE = "internal server error (the server logged the details)"


class HttpError(Exception):
    """A request HTTP itself refuses: its status, the message, extra headers; `close` ends the
    connection after answering (a body that is not worth waiting for)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None,
                 close: bool = False):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
        self.close = close

    def response(self) -> web.Response:
        response = error_response(self.status, str(self), self.headers)
        if self.close:
            response.force_close()
        return response


def error_response(status: int, message: str, headers: dict[str, str] | None = None
                   ) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def serving_error(e: ServingError) -> web.Response:
    """A domain error as its HTTP status; RESOURCE_EXHAUSTED carries Retry-After (whole seconds,
    as HTTP has it, rounded up from the server's guess)."""
    headers = {}
    if isinstance(e, Overloaded) and e.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(e.retry_after)))
    return error_response(STATUS.get(e.code, 500), str(e), headers)
