"""Fuzzing (hypothesis): mutated PNG/JPEG/GIF/BMP/WebP bytes through `decode`, and random requests
(fields, images and raw protobuf bytes) through `Classify` on a real server.

Contract: `decode` returns a 28x28 uint8 array or raises DecodeError, nothing else; every call
ends OK, INVALID_ARGUMENT or (an unknown model/version) NOT_FOUND within its deadline, never
INTERNAL/UNKNOWN, and the server still answers health afterwards.
CI runs about 2,000 cases in under a minute; `make fuzz` sets FUZZ_EXAMPLES for a longer run.
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import grpc
import numpy as np
import pytest
from fmnist.v1 import classifier_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, features

from server.dataplane import imagefile
from server.errors import DecodeError

SCALE = float(os.environ.get("FUZZ_EXAMPLES", "1"))  # `make fuzz`: many times the CI count


def fuzz(examples: int) -> settings:
    """CI: a fixed, reproducible set of cases; `make fuzz`: FUZZ_EXAMPLES times as many, random."""
    return settings(max_examples=int(examples * SCALE), deadline=None, derandomize=SCALE == 1,
                    database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


def _save(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def _seeds() -> list[bytes]:
    """Small valid images of every format and several modes, an animation of 40 frames."""
    rng = np.random.default_rng(0)
    a = np.full((30, 40), 220, np.uint8)
    a[5:25, 10:30] = rng.integers(0, 80, (20, 20), dtype=np.uint8)
    gray = Image.fromarray(a)
    rgba = gray.convert("RGBA")
    rgba.putalpha(Image.fromarray((a < 128).astype(np.uint8) * 255))
    frames = [Image.fromarray(np.roll(a, i, axis=1)).convert("P") for i in range(40)]
    seeds = [_save(gray, "PNG"), _save(rgba, "PNG"), _save(gray.convert("P"), "PNG", transparency=3),
             _save(Image.fromarray(a.astype(np.uint16) * 257), "PNG"),
             _save(gray.convert("RGB"), "JPEG", quality=80), _save(gray, "JPEG", progressive=True),
             _save(gray.convert("CMYK"), "JPEG"),
             _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10),
             _save(gray.convert("RGB"), "BMP"), _save(gray.convert("1"), "BMP"),
             _save(gray, "PNG", exif=_exif(6))]
    if features.check("webp"):
        seeds += [_save(gray.convert("RGB"), "WEBP", quality=50),
                  _save(rgba, "WEBP", lossless=True)]
    return seeds


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


SEEDS = _seeds()


def _png_chunks(data: bytes) -> list[int]:
    """Offsets of each chunk's length field."""
    offsets, pos = [], 8
    while pos + 8 <= len(data):
        offsets.append(pos)
        pos += 12 + struct.unpack(">I", data[pos:pos + 4])[0]
    return offsets


def _huge_dimensions(data: bytearray, width: int, height: int) -> None:
    """Declare width x height in the header, whatever the format (the pixels stay small)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        data[16:24] = struct.pack(">II", width, height)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    elif data[:3] == b"GIF" and len(data) >= 10:
        data[6:10] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
    elif data[:2] == b"BM" and len(data) >= 26:
        data[18:26] = struct.pack("<ii", width & 0x7FFFFFFF, height & 0x7FFFFFFF)
    elif data[:2] == b"\xff\xd8":
        sof = data.find(b"\xff\xc0")
        sof = sof if sof >= 0 else data.find(b"\xff\xc2")
        if sof >= 0 and len(data) >= sof + 9:
            data[sof + 5:sof + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
    elif data[:4] == b"RIFF" and len(data) >= 30:
        data[26:30] = struct.pack("<HH", width & 0x3FFF, height & 0x3FFF)


@st.composite
def images(draw) -> bytes:
    """A seed image with 0-4 mutations: bit flips, truncation, inserted junk, a PNG chunk whose
    length lies, huge declared dimensions; or plain random bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(min_size=0, max_size=2048))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "chunk-length", "dimensions"]))
        if not data:
            break
        if op == "flip":
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            data = data[:draw(st.integers(0, len(data)))]
        elif op == "insert":
            pos = draw(st.integers(0, len(data)))
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "chunk-length" and data[:4] == b"\x89PNG":
            chunks = _png_chunks(bytes(data))
            if chunks:
                pos = draw(st.sampled_from(chunks))
                data[pos:pos + 4] = struct.pack(">I", draw(st.integers(0, 2**32 - 1)))
        elif op == "dimensions":
            _huge_dimensions(data, draw(st.integers(1, 2**31 - 1)), draw(st.integers(1, 2**31 - 1)))
    return bytes(data)


@fuzz(1500)
@given(data=images(), inversion=st.sampled_from(imagefile.INVERSIONS))
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decode_returns_an_image_or_a_decode_error(data, inversion):
    try:
        out = imagefile.decode_encoded(data, inversion, max_pixels=1_000_000)
    except DecodeError:
        return
    assert out.shape == (28, 28) and out.dtype == np.uint8


def test_the_mutations_reach_both_outcomes():
    """The fuzzer is not only feeding noise: the seeds decode, a huge header is refused."""
    for seed in SEEDS:
        assert imagefile.decode_encoded(seed).shape == (28, 28)
    huge = bytearray(SEEDS[0])
    _huge_dimensions(huge, 100_000, 100_000)
    with pytest.raises(DecodeError, match="too many pixels"):
        imagefile.decode_encoded(bytes(huge))


# --- Classify on a real server -------------------------------------------------------------------

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}

image_messages = st.one_of(
    images().map(lambda data: pb.Image(encoded=data)),
    st.one_of(st.just(784), st.integers(0, 2000)).flatmap(
        lambda n: st.binary(min_size=n, max_size=n)).map(lambda data: pb.Image(raw=data)),
    st.just(pb.Image()))

requests = st.builds(
    pb.ClassifyRequest,
    model=st.one_of(st.sampled_from(["lenet_bn", "lenet", ""]), st.text(max_size=300)),
    version=st.one_of(st.just(0), st.integers(-2**63, 2**63 - 1)),
    top_k=st.one_of(st.integers(0, 10), st.integers(0, 2**32 - 1)),
    inversion=st.one_of(st.sampled_from([0, 1, 2, 3]), st.integers(-2**31, 2**31 - 1)),
    images=st.lists(image_messages, max_size=20))


def _call(channel, method: str, payload: bytes) -> grpc.StatusCode:
    call = channel.unary_unary(method)
    try:
        call(payload, timeout=30)
    except grpc.RpcError as e:
        assert e.code() != grpc.StatusCode.DEADLINE_EXCEEDED, "the call did not end in 30 s"
        assert e.code() in ALLOWED, f"{e.code()}: {e.details()}"
        return e.code()
    return grpc.StatusCode.OK


@fuzz(400)
@given(request=requests)
def test_classify_answers_every_request_ok_or_invalid(channel, request):
    code = _call(channel, "/fmnist.v1.Classifier/Classify", request.SerializeToString())
    if code == grpc.StatusCode.NOT_FOUND:  # only for a model or version that is not served
        assert request.model not in ("lenet_bn", "lenet") or request.version != 0


@fuzz(100)
@given(payload=st.one_of(st.binary(max_size=512),
                         requests.map(lambda r: r.SerializeToString()).flatmap(
                             lambda b: st.integers(0, len(b)).map(lambda n: b[:n]))))
def test_random_protobuf_bytes_are_ok_or_invalid(channel, payload):
    _call(channel, "/fmnist.v1.Classifier/Classify", payload)
    _call(channel, "/fmnist.v1.Classifier/ListModels", payload)


def test_the_server_still_answers_health_after_the_fuzzing(channel):
    """Runs after the fuzz tests (file order): the same module-scoped server."""
    answer = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="fmnist.v1.Classifier"), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
