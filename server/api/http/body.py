"""Reading a request's body within the server's limits: --max-message-bytes bounds its size (as it
bounds a gRPC message), --request-read-timeout the time it may take to arrive.

A declared Content-Length over the limit is refused before a byte of the body is read (and, with
`Expect: 100-continue`, before the client sends it); a chunked body is counted as it arrives and
refused at the first byte over. A body that takes too long is answered 408 and its connection
closed, so a slow sender holds a coroutine for at most the read timeout, never a thread.

Bodies are taken as sent: a compressed one (`Content-Encoding`, on the body or on a multipart
part) is refused with 415 before it is read, since inflating is where a 16 KB request becomes
10 GiB of work. A multipart body is refused at its first part past `max_parts`, and what
aiohttp cannot parse in it (a header line too long, too many headers, a NUL) is a 400. After
the answer, a body left unread is read away, raw, only when small (`leave`); else the connection
closes: a refused body is never inflated or parsed, and read away only while small.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_urldispatcher import _default_expect_handler

from server.api.http.errors import HttpError
from server.errors import InvalidRequest, shorten

DRAIN_BYTES = 64 * 1024  # an unread body is read away up to this, or twice the limit if more
_IDENTITY = ("", "identity")


def too_large(limit: int, size: int | None = None) -> HttpError:
    said = f"is {size:,} bytes, " if size is not None else ""
    return HttpError(413, f"the request body {said}over the limit of {limit:,} bytes "
                          "(--max-message-bytes); send fewer or smaller images per request")


def too_slow(timeout: float) -> HttpError:
    return HttpError(408, f"the request body did not arrive within {timeout:g} s "
                          "(--request-read-timeout)", close=True)


def check_encoding(request: web.BaseRequest) -> None:
    """415 for a compressed body, before any of it is read."""
    encoding = request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower()
    if encoding not in _IDENTITY:
        raise HttpError(415, f"Content-Encoding {shorten(encoding)} is not accepted; send the "
                             "body uncompressed", close=True)


async def leave(request: web.BaseRequest, response: web.StreamResponse, limit: int,
                timeout: float) -> None:
    """What becomes of a body the handler did not read (a refusal, a GET with a body). Read away
    as it is sent, raw, when it is at most twice `limit` bytes (declared, or found) and comes
    within `timeout` seconds: a client that sends its whole body before it reads (urllib,
    requests, tritonclient) then gets its answer, and the connection serves the next request.
    Anything larger, slower or broken closes the connection after `response`, unread. Reading
    raw bytes costs the loop little (about a millisecond for 16 MiB over loopback): it is
    inflating and parsing that cost, and neither happens here."""
    content = request.content
    if content.at_eof():
        return
    most = max(DRAIN_BYTES, 2 * limit)
    if (request.content_length or 0) > most:
        response.force_close()
        return
    read = 0
    try:
        async with asyncio.timeout(timeout):
            while not content.at_eof() and read <= most:
                read += len(await content.readany())
    except (TimeoutError, OSError, aiohttp.ClientError, HttpProcessingError):
        pass
    if not content.at_eof():
        response.force_close()


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


async def read_form(request: web.BaseRequest, limit: int, timeout: float,
                    max_parts: int) -> list[tuple[str, str | None, bytes]]:
    """A multipart/form-data body as (field name, file name or None, content) per part: at most
    `max_parts` parts, together at most `limit` bytes, all within `timeout` seconds."""
    check_length(request, limit)
    parts, left = [], limit
    try:
        async with asyncio.timeout(timeout):
            async for part in await request.multipart():
                _check_part(part, len(parts), max_parts)
                read, content = await _read_part(part, left, limit)
                left -= read
                parts.append((part.name or "", part.filename, content))
    except TimeoutError:
        raise too_slow(timeout) from None
    except (ValueError, AssertionError, RuntimeError, HttpProcessingError) as e:
        # aiohttp's words for a broken body: bad boundaries, header lines, characters
        raise HttpError(400, "the multipart/form-data body cannot be read: "
                             f"{shorten(getattr(e, 'message', None) or e, 200)}") from None
    return parts


def _check_part(part, before: int, max_parts: int) -> None:
    """A part may be read: a plain one, within the count, not compressed."""
    if not isinstance(part, aiohttp.BodyPartReader):
        raise HttpError(400, "a multipart part holds another multipart body; send each image "
                             "as a part of its own")
    if before >= max_parts:
        raise HttpError(400, f"the form has more than {max_parts} parts; send fewer images per "
                             "request", close=True)
    encoding = part.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower()
    if encoding not in _IDENTITY:
        raise HttpError(415, f"a part with Content-Encoding {shorten(encoding)}; send its file "
                             "uncompressed", close=True)


async def _read_part(part: aiohttp.BodyPartReader, left: int, limit: int) -> tuple[int, bytes]:
    """(bytes read, content with its transfer and content encodings undone) of one part, which
    may be at most `left` bytes: what the body's limit leaves after the parts before it."""
    content = bytearray()
    while chunk := await part.read_chunk():
        content += chunk
        if len(content) > left:
            raise too_large(limit)
    return len(content), bytes(part.decode(bytes(content)))


def json_value(data: bytes):
    """A JSON body as Python values; InvalidRequest (400) for whatever the parser refuses: bad
    syntax or encoding, nesting too deep for it, integers past Python's 4,300 digits."""
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError, and the digits limit
        raise InvalidRequest(f"the request body is not JSON: {shorten(str(e), 200)}") from None
    except RecursionError:
        raise InvalidRequest("the request body is not JSON this server reads: nested too "
                             "deeply") from None
