"""The bearer-token check of every call, as a grpc.aio server interceptor (server/api/security.py
holds the settings and the token file).

A call to a closed method without `authorization: Bearer <token>` metadata holding a current
token ends UNAUTHENTICATED before its handler runs and before its request is read; the log says
which method and why, never the token.
"""

from __future__ import annotations

import logging

import grpc

from server.errors import shorten
from server.api.status import fail
from server.api.security import OPEN_SERVICES, Security, TokenFile

log = logging.getLogger(__name__)

_SCHEME = "bearer"


def bearer_token(metadata) -> bytes | None:
    """The token of an `authorization: Bearer <token>` entry, or None."""
    for item in metadata or ():
        key, value = item[0], item[1]
        if key.lower() != "authorization":
            continue
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == _SCHEME and token.strip():
            return token.strip().encode("latin-1", "replace")
    return None


def interceptors(security: Security) -> list:
    """The server interceptors `security` needs (the token check, when there is a token file)."""
    if security.token_file is None:
        return []
    return [BearerTokenInterceptor(TokenFile(security.token_file), security.open_services)]


def _service_of(method: str) -> str:
    """"/fmnist.v1.Classifier/Classify" -> "fmnist.v1.Classifier"."""
    return method.lstrip("/").rsplit("/", 1)[0]


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED for calls without a valid bearer token, except to the open services
    (names of services like "grpc.health.v1.Health", or full methods like "/pkg.Svc/Method")."""

    def __init__(self, tokens: TokenFile, open_services=OPEN_SERVICES):
        self.tokens = tokens
        self.open = frozenset(open_services)

    def is_open(self, method: str) -> bool:
        return _service_of(method) in self.open or method in self.open

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if self.is_open(method):
            return await continuation(handler_call_details)
        token = bearer_token(handler_call_details.invocation_metadata)
        if token is not None and self.tokens.accepts(token):
            return await continuation(handler_call_details)
        reason = ("no `authorization: Bearer <token>` metadata" if token is None
                  else "the bearer token is not valid")
        log.info("%s refused: UNAUTHENTICATED (%s)", shorten(method), reason)  # never the token
        handler = await continuation(handler_call_details)
        return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED, reason)


def _refusal(handler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` (unary/streaming each way) that ends the call at
    once, before reading any request message; for an unknown method, a unary one."""

    async def refuse(request_or_iterator, context):
        return fail(context, code, message)

    if handler is None:
        return grpc.unary_unary_rpc_method_handler(refuse)
    make = {(False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler}[
        (handler.request_streaming, handler.response_streaming)]
    return make(refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
