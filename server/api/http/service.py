"""The HTTP application: routes (v2.py, classify.py, the page, /openapi.json) behind one
middleware that does what every request needs, in this order:

1. counts the request in flight (Server.stop waits for it), notes when it came in (deadlines)
   and begins its call record (server/dataplane/calls.py: its request id, from `X-Request-Id`
   when valid, which every answer carries back, and the trace context of `traceparent`);
2. draining: once the server is stopping, every new request but /v2/health/live gets 503 with
   the core's own message, while those in flight finish;
3. a compressed body (`Content-Encoding` other than identity) is 415, before a byte is read:
   inflating is the one cost a client can multiply a thousandfold (body.py);
4. the bearer token (auth.py), before any body is read;
5. errors: a ServingError becomes its status by errors.STATUS with the same message as over gRPC;
   HttpError its own; aiohttp's (unknown route, wrong method) the same {"error"} body; anything
   else 500 with the traceback logged and the details hidden, as over gRPC;
6. a body the handler left unread (a refusal, a GET with a body) is read away, raw, when it is
   at most twice --max-message-bytes, else the connection is closed after the answer
   (body.py's `leave`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web

from server.api.http import openapi
from server.api.http import auth
from server.api.http.auth import REFLECTION, twin
from server.api.http.body import check_encoding, expect_handler, leave
from server.api.http.classify import ClassifyRoutes
from server.api.http.deadlines import STARTED
from server.api.http.errors import (
    INTERNAL_MESSAGE,
    HttpError,
    error_response,
    serving_error,
)
from server.api.http.v2 import V2Routes
from server.dataplane import calls
from server.dataplane.core import Core
from server.errors import Cancelled, ServingError, Unavailable, shorten

log = logging.getLogger(__name__)

REQUEST_ID = "X-Request-Id"

STATIC = Path(__file__).resolve().parent / "static"
_ALWAYS_LIVE = "/v2/health/live"


class Service:
    """One HTTP application on one core; `in_flight` counts its requests being answered."""

    def __init__(self, core: Core, read_timeout: float):
        self.core = core
        self.read_timeout = read_timeout
        self.in_flight = 0
        self.app = web.Application(middlewares=[self._middleware],
                                   client_max_size=core.limits.max_message_bytes)
        expect = expect_handler(core.limits.max_message_bytes)
        parser = ThreadPoolExecutor(1, thread_name_prefix="http-json")
        self.app.on_cleanup.append(lambda app: asyncio.to_thread(parser.shutdown))
        V2Routes(core, read_timeout, parser).add_to(self.app.router, expect)
        ClassifyRoutes(core, read_timeout).add_to(self.app.router, expect)
        self.app.router.add_get("/openapi.json", self.openapi)
        self.app.router.add_get("/", self.page)
        self.app.router.add_static("/static/", STATIC)

    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        request[STARTED] = time.monotonic()
        self.in_flight += 1
        headers = request.headers
        call = calls.begin({name: headers[name] for name in calls.HEADERS if name in headers})
        try:
            response = await self._answer(request, handler)
            response.headers[REQUEST_ID] = call.id
            await leave(request, response, self.core.limits.max_message_bytes,
                        self.read_timeout)
            return response
        finally:
            self.in_flight -= 1
            calls.end(call)

    async def _answer(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            if self.core.draining and request.path != _ALWAYS_LIVE:
                raise Unavailable("the server is shutting down; retry on another instance")
            check_encoding(request)
            auth.check(self.core.access, request)
            return await handler(request)
        except ServingError as e:
            _log(request, e.code, str(e), logging.INFO if isinstance(e, Cancelled) else
                 logging.DEBUG if auth.twin_of(request) == auth.HEALTH else None)
            return serving_error(e)
        except HttpError as e:
            _log(request, str(e.status), str(e))
            return e.response()
        except web.HTTPException as e:  # aiohttp's own: no such route, wrong method
            if e.status < 400:
                raise  # a redirect is an answer, not an error
            return _aiohttp_error(request, e)
        except Exception:
            log.exception("%s %s failed unexpectedly -> 500", request.method[:32],
                          shorten(request.path), extra={"code": "INTERNAL"})
            return error_response(500, INTERNAL_MESSAGE)

    @twin(REFLECTION)
    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(openapi.describe(), indent=1),
                            content_type="application/json")

    async def page(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")


def _aiohttp_error(request: web.Request, e: web.HTTPException) -> web.Response:
    message = {404: f"no route {request.method[:32]} {shorten(request.path)}; the API is "
                    "described at /openapi.json",
               405: f"{request.method[:32]} is not allowed on {shorten(request.path)}; use "
                    f"{', '.join(sorted(getattr(e, 'allowed_methods', ())))}"}.get(
        e.status, str(e.text or e.reason)[:200])
    _log(request, str(e.status), message)
    return error_response(e.status, message, {k: v for k, v in e.headers.items()
                                              if k.lower() == "allow"})


def _log(request: web.Request, code: str, message: str, level: int | None = None) -> None:
    """One line per refused request (a failed readiness probe, asked every few seconds while a
    server starts or drains, only at DEBUG)."""
    log.log(level or logging.WARNING, "%s %s from %s -> %s: %s", request.method[:32],
            shorten(request.path), request.remote, code, message, extra={"code": code})
