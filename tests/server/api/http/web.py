"""Plain HTTP for the tests, with the standard library only (urllib, sockets): what any client
sends, so the tests see the server's answers as a client does."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tests.serving_fixtures import SAMPLES


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self):
        return json.loads(self.body)

    @property
    def error(self) -> str:
        return self.json["error"]


def call(url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         method: str | None = None, context=None) -> Answer:
    """One request; an HTTP error status is an answer too."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60, context=context) as response:
            return Answer(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as e:
        return Answer(e.code, dict(e.headers), e.read())


def post_json(url: str, value, headers: dict[str, str] | None = None) -> Answer:
    return call(url, json.dumps(value).encode(), {"Content-Type": "application/json",
                                                  **(headers or {})})


def multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body of (field, file name or None, content) parts, as browsers
    and curl -F send it."""
    boundary = uuid.uuid4().hex
    chunks = []
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename
                                                     else "")
        head = (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                "Content-Type: application/octet-stream\r\n\r\n")
        chunks.append(head.encode() + content + b"\r\n")
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def raw_exchange(port: int, head: bytes, body_parts: list[bytes] = ()) -> bytes:
    """Send a request's head and body parts over a plain socket; returns the response head and
    as much of its body as came before the connection closed or the first response ended. A
    socket timeout guards against a hang (it is not a time that the test asserts)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(head)
        for part in body_parts:
            s.sendall(part)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < _expected(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def _expected(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(head) + 4 + int(line.split(b":")[1])
    return len(data)


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def body_of(raw: bytes) -> dict:
    return json.loads(raw.partition(b"\r\n\r\n")[2])


def sample_pixels(*names: str) -> np.ndarray:
    """samples/<name>.png as the model's tensor, uint8 [n, 1, 28, 28]."""
    return np.stack([np.asarray(Image.open(SAMPLES / f"{n}.png"))[None] for n in names])


def sample_png(name: str) -> bytes:
    return (SAMPLES / f"{name}.png").read_bytes()
