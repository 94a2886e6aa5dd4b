"""The HTTP requests of `make bench-serve`, beside gRPC's: KServe v2 inference with JSON tensors,
with binary tensors (Triton's binary data extension, as tritonclient.http sends them), and
/v1/models/{m}:classify with multipart PNG files.

`payload` gives one request as (path, body, headers); bench/serve.py replays it with h2load --h1
(bench/load.py: one keep-alive HTTP/1.1 connection per caller, one request in flight each), so
the load generator stays out of the server's cores as it does for gRPC:

    path, body, headers = payload("binary", "lenet_bn", pixels, pngs, batch=1)
    cell = h2load(http_port, path, body, callers=32, seconds=5, h1=True,
                  headers=[f"{k}: {v}" for k, v in headers.items()])

Server-independent: it imports nothing of server/.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence

import numpy as np

KINDS = ("json", "binary", "multipart")


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
