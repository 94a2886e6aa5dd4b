"""HTTP's per-request cost against a running server, beside gRPC's in `make bench-serve`: KServe v2
inference with JSON tensors, with binary tensors (Triton's binary data extension, as
tritonclient.http sends them), and /v1/models/{m}:classify with multipart PNG files.

Server-independent: it imports nothing of server/, only aiohttp's client (one connection per
caller, kept alive, as a real client keeps it), driven by bench/load.py's closed loop; `payload`
alone gives the (path, body, headers) that h2load --h1 can replay instead:

    from bench import http_load
    rows = asyncio.run(http_load.measure(f"http://127.0.0.1:{http_port}", "lenet_bn", pixels, pngs,
                                         drive, cells=[(1, 1), (1, 32), (32, 4)], seconds=3))

`drive(call, callers, seconds, images_per_call)` is bench/load.py's: awaits `call()` from
`callers` tasks for `seconds` and returns {"images_per_s", "calls", "p50_ms", "p90_ms", "p99_ms"}.
Each row is that plus {"model", "side": "http json" | "http binary" | "http multipart", "batch",
"callers"}. A request that does not answer 200 stops the run with the server's message.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Sequence

import aiohttp
import numpy as np

KINDS = ("json", "binary", "multipart")
Drive = Callable[[Callable[[], Awaitable], int, float, int], Awaitable[dict]]


def payload(kind: str, model: str, pixels: np.ndarray, pngs: Sequence[bytes],
            batch: int) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers) of one request of `batch` images: pixels uint8 [n, 1, 28, 28] for
    the v2 kinds (cycled to `batch`), PNG files for multipart."""
    images = pixels[np.arange(batch) % len(pixels)]
    tensor = {"name": "image", "datatype": "UINT8", "shape": list(images.shape)}
    if kind == "json":
        body = {"inputs": [{**tensor, "data": images.ravel().tolist()}],
                "outputs": [{"name": "probabilities"}]}
        return f"/v2/models/{model}/infer", json.dumps(body).encode(), {}
    if kind == "binary":
        header = json.dumps({"inputs": [{**tensor, "parameters": {
            "binary_data_size": images.nbytes}}], "outputs": [
            {"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
        return (f"/v2/models/{model}/infer", header + images.tobytes(),
                {"Inference-Header-Content-Length": str(len(header)),
                 "Content-Type": "application/octet-stream"})
    if kind == "multipart":
        boundary = uuid.uuid4().hex
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                 f'filename="{i}.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
                 + pngs[i % len(pngs)] + b"\r\n" for i in range(batch)]
        return (f"/v1/models/{model}:classify", b"".join(parts) + f"--{boundary}--\r\n".encode(),
                {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


async def measure(base_url: str, model: str, pixels: np.ndarray, pngs: Sequence[bytes],
                  drive: Drive, cells: Sequence[tuple[int, int]], seconds: float,
                  kinds: Sequence[str] = KINDS) -> list[dict]:
    """One row per kind and (batch, callers) cell."""
    rows = []
    connector = aiohttp.TCPConnector(limit=0)  # as many connections as callers
    async with aiohttp.ClientSession(base_url, connector=connector) as session:
        for kind in kinds:
            for batch, callers in cells:
                call = _caller(session, *payload(kind, model, pixels, pngs, batch))
                cell = await drive(call, callers, seconds, batch)
                rows.append({"model": model, "side": f"http {kind}", "batch": batch,
                             "callers": callers, **cell})
    return rows


def _caller(session: aiohttp.ClientSession, path: str, body: bytes,
            headers: dict[str, str]) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        async with session.post(path, data=body, headers=headers) as response:
            answer = await response.read()
            if response.status != 200:
                raise RuntimeError(f"POST {path} -> {response.status}: {answer[:300]!r}")
    return call
