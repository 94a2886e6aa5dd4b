"""Hostile requests built byte by byte: raw HTTP/1.1 over a socket, protobuf messages encoded by
hand, decompression bombs.

By hand, because the attacks are what no well-behaved client library sends (a 100 KB method, a
body the headers lie about, a message with 1.5 million repeated fields), and because building
the big ones through protobuf's Python API would take the attacker longer than the server.
"""

from __future__ import annotations

import functools
import socket
import threading
import time
import zlib
from dataclasses import dataclass

import brotli
import grpc

_MIB = 1 << 20
_REPLY_CAP = 1 << 30  # bytes of a reply counted at most (never kept)


@dataclass
class Reply:
    """What came back: an HTTP status ("413"), a gRPC code name ("INVALID_ARGUMENT"), "closed"
    (the connection ended without an answer) or "timeout"; and the reply's size in bytes
    (headers and body, or a gRPC message and its status details)."""

    status: str
    size: int = 0
    detail: str = ""


# --- protobuf, by hand ---------------------------------------------------------------------

def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, payload: bytes | str) -> bytes:
    """A length-delimited field (strings, bytes, messages, packed repeated scalars)."""
    payload = payload.encode() if isinstance(payload, str) else payload
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def packed(number: int, values: list[int]) -> bytes:
    return field(number, b"".join(varint(v) for v in values))


def grpc_call(channel: grpc.Channel, method: str, message: bytes, timeout: float,
              metadata=()) -> Reply:
    """One unary call with a message already serialised; the reply's size is its message's, or
    its status details'."""
    call = channel.unary_unary(method)  # no (de)serializers: bytes in, bytes out
    try:
        answer = call(message, timeout=timeout, metadata=metadata)
    except grpc.RpcError as e:
        details = e.details() or ""
        return Reply(e.code().name, len(details.encode()), details[:200])
    return Reply("OK", len(answer))


# --- decompression bombs --------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def brotli_bomb(inflated: int) -> bytes:
    """`inflated` zero bytes, brotli-compressed (1 GiB: 1.6 KB, 10 GiB: 16 KB)."""
    compressor, chunk = brotli.Compressor(quality=5), bytes(_MIB)
    return b"".join([compressor.process(chunk) for _ in range(inflated // _MIB)]
                    + [compressor.finish()])


@functools.lru_cache(maxsize=4)
def gzip_bomb(inflated: int) -> bytes:
    """`inflated` zero bytes, gzip-compressed (deflate's limit is about 1:1000: 1 GiB, 1 MB)."""
    compressor, chunk = zlib.compressobj(9, zlib.DEFLATED, 31), bytes(_MIB)
    return b"".join([compressor.compress(chunk) for _ in range(inflated // _MIB)]
                    + [compressor.flush()])


# --- HTTP/1.1, raw ----------------------------------------------------------------------------

def request_head(method: str, path: str, headers: dict[str, str], body_size: int | None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: attack"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body_size is not None:
        lines.append(f"Content-Length: {body_size}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


def http_exchange(host: str, port: int, head: bytes, body: bytes = b"",
                  timeout: float = 60.0) -> Reply:
    """Send `head` and `body` (from a thread: a server may answer before the body is in, as it
    should for a body it refuses) and read one answer, counting its bytes without keeping them."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sender = threading.Thread(target=_send, args=(sock, head + body), daemon=True)
        sender.start()
        reply = _read_answer(sock, time.monotonic() + timeout)
        sock.close()
        sender.join(timeout)
        return reply


def _send(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:  # the server closed the connection: its answer (or its silence) says why
        pass


def _read_answer(sock: socket.socket, deadline: float) -> Reply:
    """The status and size of one answer: read to its Content-Length, or to the connection's
    end when it has none."""
    data = bytearray()
    try:
        while b"\r\n\r\n" not in data:
            chunk = _recv(sock, deadline)
            if not chunk:
                return Reply("closed", len(data))
            data += chunk
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        length, read = _content_length(head), len(body)
        while (length is None or read < length) and read < _REPLY_CAP:
            chunk = _recv(sock, deadline)
            if not chunk:
                break
            read += len(chunk)
        status = head.split(b" ", 2)[1].decode("ascii", "replace")
        return Reply(status, len(head) + 4 + read, body[:200].decode("utf-8", "replace"))
    except TimeoutError:
        return Reply("timeout", len(data))
    except (ConnectionResetError, BrokenPipeError):
        return Reply("closed", len(data))


def _recv(sock: socket.socket, deadline: float) -> bytes:
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    return sock.recv(1 << 20)


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return None
