"""The token check of every gRPC call, as a grpc.aio server interceptor over the one access policy
(server/dataplane/access.py, which the HTTP middleware asks too).

A call to a closed method without `authorization: Bearer <token>` metadata holding a current
token ends UNAUTHENTICATED (a token without the role the method needs: PERMISSION_DENIED)
before its handler runs and before its request is read; the log says which method and why,
never the token.
"""

from __future__ import annotations

import logging

import grpc

from server.api.grpc.status import fail
from server.api.grpc.transport import begin
from server.dataplane import calls
from server.dataplane.access import Access, bearer_token
from server.errors import ServingError, shorten

log = logging.getLogger(__name__)


def interceptors(access: Access) -> list:
    """The server interceptors `access` needs (the token check, when there are token files)."""
    return [AccessInterceptor(access)] if access.tokens_required else []


class AccessInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, access: Access):
        self.access = access

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        try:
            self.access.check(method, bearer_token(handler_call_details.invocation_metadata))
        except ServingError as e:
            log.info("%s refused: %s (%s)", shorten(method), e.code, e)  # never the token
            return _refusal(await continuation(handler_call_details), grpc.StatusCode[e.code],
                            str(e))
        return await continuation(handler_call_details)


def _refusal(handler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` (unary/streaming each way) that ends the call at
    once, before reading any request message; for an unknown method, a unary one."""

    async def refuse(request_or_iterator, context):
        call = begin(context)  # the refusal carries a request id too, and logs it
        try:
            return fail(context, code, message)
        finally:
            calls.end(call)

    if handler is None:
        return grpc.unary_unary_rpc_method_handler(refuse)
    make = {(False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler}[
        (handler.request_streaming, handler.response_streaming)]
    return make(refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
