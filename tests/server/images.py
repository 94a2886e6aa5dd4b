"""Real image bytes made with PIL, for the decoder's and the service's tests."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def object_on(background: int, size=(60, 40), box=(10, 5, 50, 35), value: int | None = None,
              mode: str = "L") -> Image.Image:
    """A filled rectangle (the "object") on a uniform background, grayscale."""
    a = np.full((size[1], size[0]), background, np.uint8)
    a[box[1]:box[3], box[0]:box[2]] = 255 - background if value is None else value
    return Image.fromarray(a).convert(mode)


def huge_png(width: int, height: int) -> bytes:
    """A real, valid 1-bit PNG of width x height, all black: rows of zeros compress ~1000:1, so a
    20000x20000 image is about 50 kB of file (and 400 million pixels once decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed pixels
    deflate = zlib.compressobj(9)
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))
