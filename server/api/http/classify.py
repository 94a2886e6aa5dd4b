"""The friendly API, for people and scripts: fmnist.v1's Classify and ListModels as JSON.

    GET  /v1/models                                  ListModels: served, refused, limits
    POST /v1/models/{m}[/versions/{v}]:classify      Classify one or more images

    curl -F image=@samples/coat.png 'http://127.0.0.1:8000/v1/models/lenet_bn:classify?top_k=3'
    curl --data-binary @samples/coat.png -H 'Content-Type: image/png' \
        http://127.0.0.1:8000/v1/models/lenet_bn:classify

A classify body is either multipart/form-data (each part an image file, in order, except the
fields `top_k` and `inversion`) or one raw image (any other content type). `top_k` (1..10,
default 1) and `inversion` (auto, always, never) may also be query parameters. The answer is
fmnist.v1's ClassifyResponse as JSON; `Server-Timing: core;dur=<ms>` says the core's time.
"""

from __future__ import annotations

import time

from aiohttp import web

from server.api.http.auth import CLASSIFIER, twin
from server.api.http.body import read_body, read_form
from server.api.http.deadlines import deadline
from server.api.http import answers
from server.dataplane import calls, imagefile
from server.dataplane.core import Core
from server.dataplane.types import ImageData, version_of
from server.errors import InvalidImage, InvalidRequest, shorten

FIELDS = ("top_k", "inversion")
# the model name may hold ":" itself ("lenet_bn:int8"): the last ":classify" ends it
_MODEL = "{model:[^/]+}"


class ClassifyRoutes:
    def __init__(self, core: Core, read_timeout: float):
        self.core = core
        self.read_timeout = read_timeout

    def add_to(self, router: web.UrlDispatcher, expect) -> None:
        router.add_get("/v1/models", self.list_models)
        for path in (f"/v1/models/{_MODEL}:classify",
                     f"/v1/models/{_MODEL}/versions/{{version:[^/:]+}}:classify"):
            router.add_post(path, self.classify, expect_handler=expect)

    @twin(CLASSIFIER + "ListModels")
    async def list_models(self, request: web.Request) -> web.Response:
        answer = answers.list_models(self.core.list_models(), self.core.limits,
                                     self.core.refused())
        answer["image_formats"] = list(imagefile.FORMATS)  # what the page lets people choose
        return web.json_response(answer)

    @twin(CLASSIFIER + "Classify")
    async def classify(self, request: web.Request) -> web.Response:
        images, names, fields = await self._images(request)
        fields = {**{k: v for k, v in request.query.items() if k in FIELDS}, **fields}
        started = time.perf_counter()
        try:
            result = await self.core.classify(
                request.match_info["model"], version_of(request.match_info.get("version", "")),
                images, _top_k(fields.get("top_k", "1")), fields.get("inversion", "auto"),
                deadline(request), protocol="http")
        except InvalidImage as e:  # name the part too: people send files, not indices
            if not names:
                raise
            raise InvalidImage(e.index, f"{e.reason} ({names[e.index]})") from None
        took = (time.perf_counter() - started) * 1000
        return web.json_response(answers.classify(result),
                                 headers={"Server-Timing": f"core;dur={took:.2f}"})

    async def _images(self, request: web.Request) -> tuple[list[ImageData], list[str], dict]:
        """The request's images, a name for each multipart one (for errors), its form fields."""
        limit = self.core.limits.max_message_bytes
        started = time.time_ns()
        if request.content_type != "multipart/form-data":
            body = await read_body(request, limit, self.read_timeout)
            calls.phase("read", started)
            return ([ImageData("encoded", body)] if body else []), [], {}
        images, names, fields = [], [], {}
        max_parts = self.core.limits.max_images_per_request + len(FIELDS)
        parts = await read_form(request, limit, self.read_timeout, max_parts)
        calls.phase("read", started)  # reading and parsing the multipart body are one step
        for name, filename, content in parts:
            if name in FIELDS and filename is None:
                fields[name] = content.decode("utf-8", "replace").strip()
            else:
                images.append(ImageData("encoded", content))
                names.append(f"file {shorten(filename)}" if filename is not None
                             else f"field {shorten(name)}")
        return images, names, fields


def _top_k(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidRequest(f"top_k must be an integer from 1 to 10, got "
                             f"{shorten(text)}") from None
