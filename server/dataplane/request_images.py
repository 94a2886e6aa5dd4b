"""One request's images -> the model's input batch, under the per-request and server-wide budgets.

All headers are read first, so a request over its pixel budget is refused before a single pixel
is decoded; then each image decodes under the server-wide `PixelBudget`, which caps the decoders'
memory whatever mix of requests arrives. Runs on a decode thread; a caller that went away (`stop`
set) or whose deadline passed stops it between images.
"""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from model_contract import SIDE
from server.admission import Limits, PixelBudget, check_deadline
from server.dataplane import imagefile
from server.dataplane.types import ImageData
from server.errors import Cancelled, DecodeError, InvalidImage, InvalidRequest


def raw_batch(images: Sequence[ImageData]) -> np.ndarray | None:
    """A request of raw images only, each of 784 bytes, as the model's input batch: their bytes as
    they are, in one read-only array (one copy to join several, none for one). None for anything
    else: `decode_request` names what is wrong, or decodes."""
    for image in images:
        if image.kind != "raw" or len(image.data) != imagefile.RAW_BYTES:
            return None
    data = images[0].data if len(images) == 1 else b"".join(image.data for image in images)
    return np.frombuffer(data, np.uint8).reshape(len(images), 1, SIDE, SIDE)


def decode_request(images: Sequence[ImageData], inversion: str, limits: Limits,
                   pixels: PixelBudget, deadline: float | None,
                   stop: threading.Event | None = None) -> np.ndarray:
    """Every image of one request -> uint8 [n, 1, 28, 28]."""
    batch = np.empty((len(images), 1, SIDE, SIDE), np.uint8)
    headers = []
    for i, image in enumerate(images):
        try:
            if image.kind == "raw":
                batch[i, 0] = imagefile.decode_raw(image.data)
            elif image.kind == "encoded":
                headers.append((i, imagefile.open_header(image.data, limits.max_image_pixels)))
            else:
                raise DecodeError("no image data: set `encoded` or `raw`")
        except DecodeError as e:
            raise InvalidImage(i, str(e)) from None
    total = sum(h.size[0] * h.size[1] for _, h in headers)
    if total > limits.max_request_pixels:
        raise InvalidRequest(f"the request's images add up to {total:,} pixels, over the limit "
                             f"of {limits.max_request_pixels:,} per request; send fewer or "
                             "smaller images")
    for i, header in headers:
        if stop is not None and stop.is_set():
            raise Cancelled(f"the caller cancelled the request while image {i} was decoded")
        check_deadline(deadline, f"while decoding image {i}")
        with pixels.reserve(header.size[0] * header.size[1], deadline):
            try:
                batch[i, 0] = imagefile.decode_opened(header, inversion)
            except DecodeError as e:
                raise InvalidImage(i, str(e)) from None
    return batch
