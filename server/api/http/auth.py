"""Who may call an HTTP route: the same bearer tokens and open services as gRPC.

Each route is marked with the gRPC method it answers like (`twin`), and `--open-services` is read
as for gRPC: the health routes are `grpc.health.v1.Health` (open by default, so probes need no
token), /openapi.json is the reflection service (it describes the API, as reflection does), every
other route is its fmnist.v1 or KServe v2 method ("/inference.GRPCInferenceService/ModelInfer").
The page and its files hold no data and are always open; what they show comes from closed
routes, so the page asks for the token. A refused request gets 401 before its body is read.
"""

from __future__ import annotations

from aiohttp import web

from server.api.auth import BearerTokenInterceptor, bearer_token
from server.api.http.errors import HttpError
from server.api.security import Security, TokenFile

HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1.ServerReflection"
V2 = "/inference.GRPCInferenceService/"
CLASSIFIER = "/fmnist.v1.Classifier/"
_ATTRIBUTE = "grpc_method"


def twin(method: str):
    """Mark a route handler with the gRPC service or method it answers like."""
    def mark(handler):
        setattr(handler, _ATTRIBUTE, method)
        return handler
    return mark


def twin_of(request: web.Request) -> str | None:
    """The marked method of the route `request` matched; None for the page and unknown paths."""
    return getattr(request.match_info.handler, _ATTRIBUTE, None)


class TokenCheck:
    """The bearer check of gRPC's interceptor (server/api/auth.py), applied to HTTP headers."""

    def __init__(self, security: Security):
        self._gate = (None if security.token_file is None
                      else BearerTokenInterceptor(TokenFile(security.token_file),
                                                  security.open_services))

    def check(self, request: web.Request) -> None:
        """Return when the request may go on; HttpError 401 when it may not."""
        method = twin_of(request)
        if self._gate is None or method is None or self._gate.is_open(method):
            return
        token = bearer_token(request.headers.items())
        if token is not None and self._gate.tokens.accepts(token):
            return
        reason = ("no `Authorization: Bearer <token>` header" if token is None
                  else "the bearer token is not valid")
        raise HttpError(401, reason, {"WWW-Authenticate": "Bearer"})
