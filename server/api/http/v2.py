"""KServe v2 REST (the Open Inference Protocol over HTTP) as Triton serves it, on the dataplane.

    GET  /v2                                         server metadata
    GET  /v2/health/live, /v2/health/ready           200, or 503 {"error"} when not ready
    GET  /v2/models/{m}[/versions/{v}]               model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready         200, or 404 for a model or version not served
    GET  /v2/models/{m}[/versions/{v}]/config        Triton's model configuration
    GET  /v2/models[/{m}[/versions/{v}]]/stats       Triton's statistics
    POST /v2/models/{m}[/versions/{v}]/infer         inference (JSON or binary tensors)
    POST /v2/repository/index                        served and refused versions
    POST /v2/repository/models/{m}/load | /unload    the live model repository

Each route is one dataplane call (server/dataplane/core.py), its answer written as JSON by
answers.py; inference's tensors are translated by v2_tensors.py. The gRPC adapter makes the same
calls, so the two protocols cannot drift apart.
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from server.api.http import answers
from server.api.http import v2_tensors as tensors
from server.api.http.auth import HEALTH, V2, twin
from server.api.http.body import json_value, read_body
from server.api.http.deadlines import deadline
from server.dataplane import calls
from server.dataplane.access import bearer_token
from server.dataplane.core import Core
from server.dataplane.tensors import TensorRequest
from server.dataplane.types import version_of
from server.errors import InvalidRequest, Unavailable, shorten

_SMALL_BODY = 64 * 1024  # repository requests carry a few parameters at most
INLINE_BODY_BYTES = 256 * 1024  # inference bodies up to this size are parsed on the loop (<1 ms)


class V2Routes:
    def __init__(self, core: Core, read_timeout: float, parser: ThreadPoolExecutor):
        self.core = core
        self.read_timeout = read_timeout
        self._parser = parser

    def add_to(self, router: web.UrlDispatcher, expect) -> None:
        router.add_get("/v2", self.server_metadata)
        router.add_get("/v2/health/live", self.live)
        router.add_get("/v2/health/ready", self.ready)
        router.add_get("/v2/models/stats", self.statistics)  # before /v2/models/{model}
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            router.add_get(prefix, self.model_metadata)
            router.add_get(prefix + "/ready", self.model_ready)
            router.add_get(prefix + "/config", self.model_config)
            router.add_get(prefix + "/stats", self.statistics)
            router.add_post(prefix + "/infer", self.infer, expect_handler=expect)
        router.add_post("/v2/repository/index", self.repository_index, expect_handler=expect)
        router.add_post("/v2/repository/models/{model}/load", self.load, expect_handler=expect)
        router.add_post("/v2/repository/models/{model}/unload", self.unload,
                        expect_handler=expect)

    @twin(V2 + "ServerMetadata")
    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(answers.server_metadata(self.core.server_info()))

    @twin(HEALTH)
    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    @twin(HEALTH)
    async def ready(self, request: web.Request) -> web.Response:
        """Ready as gRPC health and ServerReady say (the dataplane's one answer): 503 with the
        reason while starting, draining, serving no model, or with a worker down."""
        problem = self.core.not_ready()
        if problem is not None:
            raise Unavailable(f"not ready: {problem}")
        return web.json_response({"ready": True})

    @twin(V2 + "ModelMetadata")
    async def model_metadata(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        return web.json_response(answers.model_metadata(self.core.model_metadata(
            name, version_of(version))))

    @twin(V2 + "ModelReady")
    async def model_ready(self, request: web.Request) -> web.Response:
        """200 when the version would be served now; 404 naming what is served otherwise."""
        name, version = _model(request)
        if not self.core.model_ready(name, version_of(version)):
            self.core.lookup(name, version_of(version))  # ModelNotFound: 404 names the served
            raise Unavailable(f"not ready: {self.core.not_ready() or 'model ' + name}")
        return web.json_response({"name": name, "ready": True})

    @twin(V2 + "ModelConfig")
    async def model_config(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        return web.json_response(answers.model_config(self.core.model_config(
            name, version_of(version))))

    @twin(V2 + "ModelStatistics")
    async def statistics(self, request: web.Request) -> web.Response:
        name, version = request.match_info.get("model", ""), request.match_info.get("version", "")
        return web.json_response(answers.statistics(self.core.statistics(
            name, version_of(version) if version else None)))

    @twin(V2 + "ModelInfer")
    async def infer(self, request: web.Request) -> web.Response:
        started = time.time_ns()
        body = await read_body(request, self.core.limits.max_message_bytes, self.read_timeout)
        calls.phase("read", started)
        name, version = _model(request)
        started = time.time_ns()
        call = await self._parse(body, request.headers.get(tensors.HEADER_LENGTH))
        calls.phase("parse", started)
        answer = await self.core.infer_tensors(TensorRequest(
            name, version_of(version), call.read, call.id, deadline(request, call.timeout),
            protocol="http"))
        data, headers = tensors.infer_body(answer, call)
        return web.Response(body=data, headers=headers)

    async def _parse(self, body: bytes, header_length: str | None) -> tensors.InferCall:
        """The body parsed on the loop when small; a large one in the parser's one thread, so
        the loop answers others meanwhile (between the parser's C calls) and parses never pile
        up on the GIL more than one at a time."""
        if len(body) <= INLINE_BODY_BYTES:
            return tensors.parse_infer(body, header_length, self.core.limits)
        return await asyncio.get_running_loop().run_in_executor(
            self._parser, tensors.parse_infer, body, header_length, self.core.limits)

    @twin(V2 + "RepositoryIndex")
    async def repository_index(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        ready = body.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidRequest(f'"ready" must be true or false, got {shorten(json.dumps(ready))}')
        return web.json_response(answers.index(self.core.index(ready)))

    @twin(V2 + "RepositoryModelLoad")
    async def load(self, request: web.Request) -> web.Response:
        await self.core.load(request.match_info["model"], await self._parameters(request),
                             *_caller(request))
        return web.json_response({})

    @twin(V2 + "RepositoryModelUnload")
    async def unload(self, request: web.Request) -> web.Response:
        await self.core.unload(request.match_info["model"], await self._parameters(request),
                               *_caller(request))
        return web.json_response({})

    # --- helpers ----------------------------------------------------------------------------

    async def _parameters(self, request: web.Request) -> list[str]:
        """The names of Triton's load/unload body's {"parameters": {...}} (tritonclient sends
        unload_dependents); the dataplane refuses those it does not take, by name."""
        parameters = (await self._json_body(request)).get("parameters", {})
        if not isinstance(parameters, dict):
            raise InvalidRequest('"parameters" must be a JSON object')
        for key, value in parameters.items():
            if not isinstance(value, (bool, int, str, float)):
                raise InvalidRequest(f"parameter {shorten(key)} must be a boolean, an integer or "
                                     f"a string, got {shorten(json.dumps(value))}")
        return list(parameters)

    async def _json_body(self, request: web.Request) -> dict:
        """A small optional JSON object body ({} when empty)."""
        body = await read_body(request, min(_SMALL_BODY, self.core.limits.max_message_bytes),
                               self.read_timeout)
        if not body.strip():
            return {}
        value = json_value(body)
        if not isinstance(value, dict):
            raise InvalidRequest("the request body must be a JSON object")
        return value


def _caller(request: web.Request) -> tuple[bytes | None, str]:
    """The request's bearer token (for the access policy) and its peer (for the log)."""
    return bearer_token(request.headers.items()), str(request.remote)


def _model(request: web.Request) -> tuple[str, str]:
    return request.match_info["model"], request.match_info.get("version", "")

