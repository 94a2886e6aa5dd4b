"""The attacks: each one hostile request (or a few at once) against a running server, at a small
size (`make test`) or the full size that was first seen to stall a server (`make attack`).

Each `Attack.send(target, full)` makes its request(s) and returns the server's `Reply`; `expect`
lists the answers a hardened server gives (a clear 4xx or its gRPC code; "closed" where closing
the connection is the answer). Sizes are chosen against the server's --max-message-bytes, so a
request is refused for what it holds, not for its length.
"""

from __future__ import annotations

import base64
import json
import resource
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import grpc

from scripts.attacks.wire import (Reply, brotli_bomb, field, grpc_call, gzip_bomb, http_exchange,
                                  packed, request_head, varint)

_GIB = 1 << 30
SMALL = 4 << 20  # bytes of a request at the small sizes (full: --max-message-bytes)
V2_INFER = "/inference.GRPCInferenceService/ModelInfer"
CLASSIFY = "/fmnist.v1.Classifier/Classify"


@dataclass(frozen=True)
class Target:
    host: str
    grpc_port: int
    http_port: int
    model: str = "lenet_bn"
    token: str | None = None  # a bearer token the server accepts
    max_message_bytes: int = 16 * 1024 * 1024
    max_connections: int = 0  # the server's cap per port (0: not known)
    fds: Callable[[], int] | None = None  # the server's open file descriptors now, when known

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def metadata(self) -> tuple:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"{self.host}:{self.grpc_port}", options=[
            ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])


@dataclass(frozen=True)
class Attack:
    name: str
    what: str  # one line for the table
    send: Callable[[Target, bool], Reply]
    expect: tuple[str, ...]
    max_reply: int = 16 * 1024  # bytes: an error is a sentence, never an echo of the request


# --- helpers ----------------------------------------------------------------------------------

def _http(t: Target, method: str, path: str, body: bytes = b"", headers: dict | None = None,
          auth: bool = True, timeout: float = 120.0) -> Reply:
    headers = {**(t.auth() if auth else {}), **(headers or {})}
    head = request_head(method, path, headers, len(body) if body or method == "POST" else None)
    return http_exchange(t.host, t.http_port, head, body, timeout)


def _infer_path(t: Target) -> str:
    return f"/v2/models/{t.model}/infer"


def _json(t: Target, body: str | bytes, path: str | None = None, headers=None) -> Reply:
    body = body.encode() if isinstance(body, str) else body
    return _http(t, "POST", path or _infer_path(t),
                 body, {"Content-Type": "application/json", **(headers or {})})


def _fill(t: Target, full: bool, element: str, share: float = 0.95) -> int:
    """How many `element`s (with their commas) fill most of a message (full) or of SMALL."""
    room = t.max_message_bytes if full else SMALL
    return int(room * share) // (len(element) + 1)


def _image_input(n: int = 1) -> dict:
    return {"name": "image", "datatype": "UINT8", "shape": [n, 1, 28, 28], "data": [0] * 784 * n}


def _grpc(t: Target, method: str, message: bytes) -> Reply:
    with t.channel() as channel:
        return grpc_call(channel, method, message, timeout=120, metadata=t.metadata())


def _v2_request(t: Target, *parts: bytes) -> bytes:
    return field(1, t.model) + b"".join(parts)


def _v2_input(name: str, datatype: str, shape: list[int], contents: bytes = b"") -> bytes:
    return field(5, field(1, name) + field(2, datatype) + packed(3, shape)
                 + (field(5, contents) if contents else b""))


def _at_once(send: Callable[[int], Reply], n: int) -> Reply:
    """`n` requests at the same time (`send(i)` makes the i-th); the first reply that is not
    the most common one (else that one), so one odd answer shows."""
    with ThreadPoolExecutor(min(n, 64)) as pool:
        replies = list(pool.map(send, range(n)))
    statuses = [r.status for r in replies]
    common = max(set(statuses), key=statuses.count)
    return next((r for r in replies if r.status != common), replies[0])


def _multipart(parts: list[bytes], boundary: str = "attackboundary") -> tuple[bytes, dict]:
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + p + b"\r\n" for p in parts)
    body += b"--" + boundary.encode() + b"--\r\n"
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _classify(t: Target, parts: list[bytes]) -> Reply:
    body, headers = _multipart(parts)
    return _http(t, "POST", f"/v1/models/{t.model}:classify", body, headers)


def _png_part(name: str = "image", filename: str = "a.png", extra: bytes = b"") -> bytes:
    png = base64.b64decode(  # a 1x1 black PNG
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg==")
    return (f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'.encode(
        "utf-8", "surrogateescape") + extra + b"Content-Type: image/png\r\n\r\n" + png)


# --- 1. compressed bodies ---------------------------------------------------------------------

def _bomb(full: bool) -> bytes:
    return brotli_bomb(10 * _GIB if full else _GIB)


def br_infer(t: Target, full: bool) -> Reply:
    return _json(t, _bomb(full), headers={"Content-Encoding": "br"})


def br_no_token(t: Target, full: bool) -> Reply:
    return _http(t, "POST", _infer_path(t), _bomb(full), {"Content-Encoding": "br"}, auth=False)


def br_no_route(t: Target, full: bool) -> Reply:
    return _http(t, "POST", "/no/such/route", _bomb(full), {"Content-Encoding": "br"})


def br_health(t: Target, full: bool) -> Reply:
    return _http(t, "GET", "/v2/health/live", _bomb(full), {"Content-Encoding": "br"})


def br_three(t: Target, full: bool) -> Reply:
    return _at_once(lambda _: br_infer(t, full), 3)


def gzip_body(t: Target, full: bool) -> Reply:
    bomb = gzip_bomb(8 * _GIB if full else 256 << 20)
    return _json(t, bomb, headers={"Content-Encoding": "gzip"})


def gzip_part(t: Target, full: bool) -> Reply:
    """A multipart part that says it is gzip-compressed (aiohttp would inflate it whole)."""
    bomb = gzip_bomb(4 * _GIB if full else 256 << 20)
    part = (b'Content-Disposition: form-data; name="image"; filename="a.png"\r\n'
            b"Content-Encoding: gzip\r\nContent-Type: image/png\r\n\r\n" + bomb)
    return _classify(t, [part])


# --- 2. sizes trusted before they are checked -------------------------------------------------

def json_empty_bytes(t: Target, full: bool) -> Reply:
    n = _fill(t, full, '""', 0.98)
    return _json(t, '{"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [%d], '
                    '"data": [%s""]}]}' % (n, '"",' * (n - 1)))


def json_outputs_repeated(t: Target, full: bool) -> Reply:
    output = '{"name": "logits"}'
    n = _fill(t, full, output, 0.9)
    head = json.dumps({"inputs": [_image_input()]})[:-1]
    return _json(t, head + ', "outputs": [' + ",".join([output] * n) + "]}")


def binary_empty_bytes(t: Target, full: bool) -> Reply:
    n = _fill(t, full, "xxx", 0.98)  # 4 bytes each: a zero length
    header = json.dumps({"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [n],
                                     "parameters": {"binary_data_size": 4 * n}}]}).encode()
    return _json(t, header + bytes(4 * n), headers={
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream"})


def json_zeros(t: Target, full: bool) -> Reply:
    n = _fill(t, full, "0", 0.98)
    return _json(t, '{"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 1, 28, 28],'
                    ' "data": [%s0]}]}' % ("0," * (n - 1)))


def grpc_outputs(t: Target, full: bool) -> Reply:
    output = field(6, field(1, "logits"))
    n = (t.max_message_bytes if full else SMALL) * 9 // 10 // len(output)
    raw = field(7, bytes(784))
    return _grpc(t, V2_INFER, _v2_request(t, _v2_input("image", "UINT8", [1, 1, 28, 28]),
                                          output * n, raw))


def grpc_raw_bytes(t: Target, full: bool) -> Reply:
    n = (t.max_message_bytes if full else SMALL) * 9 // 10 // 4
    return _grpc(t, V2_INFER, _v2_request(t, _v2_input("image_bytes", "BYTES", [n]),
                                          field(7, bytes(4 * n))))


def grpc_bytes_contents(t: Target, full: bool) -> Reply:
    n = (t.max_message_bytes if full else SMALL) * 9 // 10 // 2
    contents = (varint(8 << 3 | 2) + varint(0)) * n  # bytes_contents = 8, each empty
    return _grpc(t, V2_INFER, _v2_request(t, _v2_input("image_bytes", "BYTES", [n], contents)))


def grpc_empty_images(t: Target, full: bool) -> Reply:
    n = (t.max_message_bytes if full else SMALL) * 9 // 10 // 2
    return _grpc(t, CLASSIFY, field(1, t.model) + field(3, b"") * n)


# --- 3. errors that echo their input ----------------------------------------------------------

def json_shape_dims(t: Target, full: bool) -> Reply:
    n = _fill(t, full, "1", 0.95)
    return _json(t, '{"inputs": [{"name": "image", "datatype": "UINT8", "shape": [%s1], '
                    '"data": []}]}' % ("1," * (n - 1)))


def grpc_shape_dims(t: Target, full: bool) -> Reply:
    n = (t.max_message_bytes if full else SMALL) * 9 // 10
    return _grpc(t, V2_INFER, _v2_request(t, _v2_input("image", "UINT8", [1] * n)))


def long_inversion(t: Target, full: bool) -> Reply:
    value = b"x" * (1 << 20 if full else 100_000)
    return _classify(t, [_png_part(), b'Content-Disposition: form-data; name="inversion"\r\n\r\n'
                         + value])


def long_method(t: Target, full: bool) -> Reply:
    method = "X" * (1 << 20 if full else 100_000)
    return _http(t, method, "/v2/health/live")


# --- 4. connections ---------------------------------------------------------------------------

def idle_connections(t: Target, full: bool) -> Reply:
    """Open connections to both ports and hold them: what the server holds meanwhile must stay
    within its cap per port ("over the cap" otherwise), the rest refused."""
    n = min(20_000, _own_file_limit() - 256) if full else 4 * t.max_connections
    before = t.fds() if t.fds else 0
    held, failed = [], 0
    try:
        for port in (t.http_port, t.grpc_port):
            for _ in range(n // 2):
                try:
                    held.append(socket.create_connection((t.host, port), timeout=10))
                except OSError:
                    failed += 1
        time.sleep(0.5)  # holding them: the server has closed what it refuses
        holding = (t.fds() - before) if t.fds else None
        closed = sum(_closed_by_server(sock) for sock in held)
    finally:
        for sock in held:
            sock.close()
    over = holding is not None and t.max_connections and holding > 2 * t.max_connections + 4
    return Reply("over the cap" if over else "held", 0,
                 f"{n:,} connections: {failed:,} not made, {closed:,} closed by the server, "
                 f"{holding if holding is not None else '?'} descriptors held by it")


def _own_file_limit() -> int:
    """This process's open-file limit, raised to its hard limit: what it may hold itself."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


# --- 5. errors that were 500s -----------------------------------------------------------------

def deep_json_infer(t: Target, full: bool) -> Reply:
    depth = 1_000_000 if full else 100_000
    return _json(t, "[" * depth + "]" * depth)


def deep_json_repository(t: Target, full: bool) -> Reply:
    depth = 30_000  # the repository's bodies are small (64 KiB)
    return _json(t, '{"ready": ' + "[" * depth + "]" * depth + "}", "/v2/repository/index")


def huge_integer(t: Target, full: bool) -> Reply:
    digits = 1_000_000 if full else 50_000
    return _json(t, '{"inputs": [{"name": "image", "datatype": "UINT8", "shape": [%s], '
                    '"data": []}]}' % ("9" * digits))


def long_part_header(t: Target, full: bool) -> Reply:
    return _classify(t, [_png_part(extra=b"X-Long: " + b"x" * 20_000 + b"\r\n")])


def many_part_headers(t: Target, full: bool) -> Reply:
    extra = b"".join(b"X-H%d: x\r\n" % i for i in range(1000))
    return _classify(t, [_png_part(extra=extra)])


def nul_filename(t: Target, full: bool) -> Reply:
    return _classify(t, [_png_part(filename="a\x00.png")])


_MALFORMED = (
    b"\x16\x03\x01 garbage\r\n\r\n",  # TLS on a plaintext port
    b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",  # a bad header
    b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\nBAD\x01 / HTTP/1.1\r\n\r\n",  # 2nd
)


def bad_request_lines(t: Target, full: bool) -> Reply:
    n = 2000 if full else 200
    return _at_once(lambda i: http_exchange(t.host, t.http_port, _MALFORMED[i % len(_MALFORMED)],
                                            timeout=30), n)


# --- 6. work before limits --------------------------------------------------------------------

def empty_parts(t: Target, full: bool) -> Reply:
    part = b'Content-Disposition: form-data; name="image"\r\n\r\n'
    n = (t.max_message_bytes if full else SMALL) * 9 // 10 // (len(part) + 20)
    return _classify(t, [part] * n)


def unicode_header_length(t: Target, full: bool) -> Reply:
    header = json.dumps({"inputs": [_image_input()]})
    return _json(t, header, headers={
        "Inference-Header-Content-Length": "".join(chr(0x0660 + int(d)) for d in str(len(header)))})


ATTACKS = (
    Attack("br-bomb", "brotli body inflating to 1 GiB (full: 10 GiB) on v2 infer", br_infer,
           ("415",)),
    Attack("br-bomb-no-token", "the same without a token", br_no_token, ("401", "415")),
    Attack("br-bomb-no-route", "the same to a route that does not exist", br_no_route,
           ("404", "415")),
    Attack("br-bomb-health", "the same as the body of GET /v2/health/live", br_health, ("415",)),
    Attack("br-bomb-x3", "three brotli bombs at once", br_three, ("415",)),
    Attack("gzip-body", "gzip body inflating to 256 MiB (full: 8 GiB)", gzip_body, ("415",)),
    Attack("gzip-part", "a multipart part with Content-Encoding: gzip", gzip_part, ("415",)),
    Attack("json-empty-bytes", "v2 JSON: millions of empty BYTES elements", json_empty_bytes,
           ("400",)),
    Attack("json-outputs", "v2 JSON: 'logits' requested ~100,000 (full: 880,000) times",
           json_outputs_repeated, ("400",)),
    Attack("binary-empty-bytes", "v2 binary BYTES: millions of zero-length elements",
           binary_empty_bytes, ("400",)),
    Attack("json-zeros", "v2 JSON: millions of zeros as one image's data", json_zeros, ("400",)),
    Attack("grpc-outputs", "v2 gRPC: 'logits' requested ~100,000 (full: 1.5 M) times",
           grpc_outputs, ("INVALID_ARGUMENT",)),
    Attack("grpc-raw-bytes", "v2 gRPC: raw BYTES of millions of zero-length elements",
           grpc_raw_bytes, ("INVALID_ARGUMENT",)),
    Attack("grpc-bytes-contents", "v2 gRPC: a million empty bytes_contents",
           grpc_bytes_contents, ("INVALID_ARGUMENT",)),
    Attack("grpc-empty-images", "fmnist.v1 Classify: a million empty images", grpc_empty_images,
           ("INVALID_ARGUMENT",)),
    Attack("json-shape-dims", "v2 JSON: a shape of millions of dimensions", json_shape_dims,
           ("400",)),
    Attack("grpc-shape-dims", "v2 gRPC: a shape of millions of dimensions", grpc_shape_dims,
           ("INVALID_ARGUMENT",)),
    Attack("long-inversion", "/v1 classify: a 100 KB (full: 1 MB) inversion field",
           long_inversion, ("400",)),
    Attack("long-method", "a 100 KB (full: 1 MB) HTTP method", long_method, ("400", "closed")),
    Attack("idle-connections", "connections held open on both ports (full: 20,000)",
           idle_connections, ("held",)),
    Attack("deep-json-infer", "v2 JSON nested 100,000 (full: 1 M) levels deep", deep_json_infer,
           ("400",)),
    Attack("deep-json-repository", "repository index body nested 30,000 levels deep",
           deep_json_repository, ("400",)),
    Attack("huge-integer", "a 50,000-digit (full: 1 M) integer in a shape", huge_integer,
           ("400",)),
    Attack("long-part-header", "a multipart part header of 20 KB", long_part_header, ("400",)),
    Attack("many-part-headers", "a multipart part with 1,000 headers", many_part_headers,
           ("400",)),
    Attack("nul-filename", "a multipart filename holding NUL", nul_filename, ("400",)),
    Attack("bad-request-lines", "200 (full: 2,000) malformed request lines at once",
           bad_request_lines, ("400", "closed")),
    Attack("empty-parts", "tens of thousands of empty multipart parts", empty_parts,
           ("400", "413")),
    Attack("unicode-length", "Inference-Header-Content-Length in Arabic-Indic digits",
           unicode_header_length, ("400",)),
)
BY_NAME = {attack.name: attack for attack in ATTACKS}
