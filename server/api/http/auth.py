"""Who may call an HTTP route: the one access policy of both protocols (server/dataplane/access.py).

Each route is marked with the gRPC method it answers like (`twin`), and the policy reads it as
for gRPC: the health routes are `grpc.health.v1.Health` (open by default, so probes need no
token), /openapi.json is the reflection service (it describes the API, as reflection does), every
other route is its fmnist.v1 or KServe v2 method ("/inference.GRPCInferenceService/ModelInfer").
The page and its files hold no data and are always open; what they show comes from closed
routes, so the page asks for the token. A refused request gets 401 (no valid token) or 403 (a
token without the role) before its body is read.
"""

from __future__ import annotations

from aiohttp import web

from server.api.http.errors import HttpError
from server.dataplane.access import Access, bearer_token
from server.errors import Unauthenticated

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


def check(access: Access, request: web.Request) -> None:
    """Return when the request may go on; else HttpError 401 or 403 (a ServingError's status)."""
    method = twin_of(request)
    if method is None:
        return
    try:
        access.check(method, bearer_token(request.headers.items()),
                     "`Authorization: Bearer <token>` header")
    except Unauthenticated as e:
        raise HttpError(401, str(e), {"WWW-Authenticate": "Bearer"}) from None
