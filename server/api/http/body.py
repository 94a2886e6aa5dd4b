"""Reading a request's body within the server's limits: --max-message-bytes bounds its size (as it
bounds a gRPC message), --request-read-timeout the time it may take to arrive.

A declared Content-Length over the limit is refused before a byte of the body is read (and, with
`Expect: 100-continue`, before the client sends it); a chunked body is counted as it arrives and
refused at the first byte over. A body that takes too long is answered 408 and its connection
closed, so a slow sender holds a coroutine for at most the read timeout, never a thread.
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from aiohttp.web_urldispatcher import _default_expect_handler

from server.api.http.errors import HttpError


def too_large(limit: int, size: int | None = None) -> HttpError:
    said = f"is {size:,} bytes, " if size is not None else ""
    return HttpError(413, f"the request body {said}over the limit of {limit:,} bytes "
                          "(--max-message-bytes); send fewer or smaller images per request")


def too_slow(timeout: float) -> HttpError:
    return HttpError(408, f"the request body did not arrive within {timeout:g} s "
                          "(--request-read-timeout)", close=True)


def check_length(request: web.BaseRequest, limit: int) -> None:
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit, request.content_length)


def expect_handler(limit: int):
    """aiohttp's `Expect: 100-continue` handler, refusing a body over `limit` before it is sent
    (curl asks so for bodies over 1 MiB)."""
    async def handle(request: web.Request):
        if request.content_length is not None and request.content_length > limit:
            return too_large(limit, request.content_length).response()
        return await _default_expect_handler(request)

    return handle


async def read_body(request: web.BaseRequest, limit: int, timeout: float) -> bytes:
    """The whole body, at most `limit` bytes, within `timeout` seconds."""
    check_length(request, limit)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise too_slow(timeout) from None
    return b"".join(chunks)


async def read_form(request: web.BaseRequest, limit: int,
                    timeout: float) -> list[tuple[str, str | None, bytes]]:
    """A multipart/form-data body as (field name, file name or None, content) per part, its
    parts together at most `limit` bytes, all within `timeout` seconds."""
    check_length(request, limit)
    parts, left = [], limit
    try:
        async with asyncio.timeout(timeout):
            async for part in await request.multipart():
                if not isinstance(part, aiohttp.BodyPartReader):
                    raise HttpError(400, "a multipart part holds another multipart body; send "
                                         "each image as a part of its own")
                read, content = await _read_part(part, left, limit)
                left -= read
                parts.append((part.name or "", part.filename, content))
    except TimeoutError:
        raise too_slow(timeout) from None
    except (ValueError, AssertionError, RuntimeError) as e:  # aiohttp's words for a broken body
        raise HttpError(400, f"the multipart/form-data body cannot be read: {e}") from None
    return parts


async def _read_part(part: aiohttp.BodyPartReader, left: int, limit: int) -> tuple[int, bytes]:
    """(bytes read, content with its transfer and content encodings undone) of one part, which
    may be at most `left` bytes: what the body's limit leaves after the parts before it."""
    content = bytearray()
    while chunk := await part.read_chunk():
        content += chunk
        if len(content) > left:
            raise too_large(limit)
    return len(content), bytes(part.decode(bytes(content)))
