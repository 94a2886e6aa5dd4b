"""EXIF orientation: a photo stored sideways with its orientation tag decodes upright, for every
one of the eight orientations (a sideways shirt photo decodes as the upright one), and a real
server classifies a sideways photo as the upright one."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fmnist.v1 import classifier_pb2 as pb
from PIL import Image, ImageOps

from server.dataplane import imagefile
from tests.serving_fixtures import SAMPLES

# How a camera stores the upright picture for each tag: the inverse of what exif_transpose does.
STORED = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
          4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
          6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
          8: Image.Transpose.ROTATE_270}


def with_orientation(image: Image.Image, orientation: int | None, fmt: str, **params) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, format=fmt, exif=exif, **params)
    return buf.getvalue()


def shirt_photo() -> Image.Image:
    """samples/shirt.png as a photo: 10x larger, dark shirt on a light background, in RGB."""
    shirt = Image.open(SAMPLES / "shirt.png").convert("L").resize((280, 280), Image.LANCZOS)
    return ImageOps.invert(ImageOps.expand(shirt, 40, fill=0)).convert("RGB")


def sideways(image: Image.Image, orientation: int) -> Image.Image:
    transpose = STORED[orientation]
    stored = image if transpose is None else image.transpose(transpose)
    # the camera's view: exif_transpose must give the upright image back
    check = Image.open(io.BytesIO(with_orientation(stored, orientation, "PNG")))
    assert np.array_equal(np.asarray(ImageOps.exif_transpose(check)), np.asarray(image))
    return stored


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_decodes_upright(orientation):
    upright = shirt_photo()
    expected = imagefile.decode_encoded(with_orientation(upright, None, "PNG"))
    stored = with_orientation(sideways(upright, orientation), orientation, "PNG")
    assert np.array_equal(imagefile.decode_encoded(stored), expected)


def test_a_sideways_jpeg_without_honouring_the_tag_would_differ():
    """The check above is not vacuous: the stored pixels alone decode to something else."""
    upright = shirt_photo()
    expected = imagefile.decode_encoded(with_orientation(upright, None, "JPEG", quality=95))
    tagged = with_orientation(sideways(upright, 6), 6, "JPEG", quality=95)
    untagged = with_orientation(sideways(upright, 6), None, "JPEG", quality=95)
    diff = lambda a, b: np.abs(a.astype(int) - b.astype(int)).mean()  # noqa: E731
    assert diff(imagefile.decode_encoded(tagged), expected) < 3
    assert diff(imagefile.decode_encoded(untagged), expected) > 20


@pytest.mark.parametrize("exif", [99, 0, b"Exif\x00\x00II*\x00\xff\xff\xff\x7f"],
                         ids=["orientation 99", "orientation 0", "IFD offset out of range"])
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_a_broken_or_out_of_range_orientation_is_ignored(exif):
    if isinstance(exif, int):
        data = with_orientation(shirt_photo(), exif, "JPEG")
    else:
        buf = io.BytesIO()
        shirt_photo().save(buf, format="JPEG", exif=exif)
        data = buf.getvalue()
    plain = imagefile.decode_encoded(with_orientation(shirt_photo(), None, "JPEG"))
    assert np.abs(imagefile.decode_encoded(data).astype(int) - plain).mean() < 3


def band_photo() -> Image.Image:
    """What the test models learned (tests/conftest.py): class 3 lights horizontal band 3. At
    28x28 the decoder passes it through unchanged, so only the orientation can change it."""
    a = np.random.default_rng(0).integers(0, 60, (28, 28)).astype(np.uint8)
    a[8:10, 4:24] = 255
    return Image.fromarray(a).convert("RGB")


def test_a_sideways_photo_is_classified_as_the_upright_one(stub):
    upright = band_photo()
    images = [with_orientation(upright, None, "PNG"),
              with_orientation(sideways(upright, 6), 6, "PNG"),
              with_orientation(sideways(upright, 8), 8, "PNG"),
              with_orientation(sideways(upright, 6), None, "PNG")]  # the tag lost: sideways
    answer = stub.Classify(pb.ClassifyRequest(model="lenet_bn", top_k=10,
                                              images=[pb.Image(encoded=i) for i in images]),
                           timeout=60)
    probabilities = [{p.class_id: p.probability for p in c.predictions}
                     for c in answer.classifications]
    gap = lambda a, b: max(abs(a[k] - b[k]) for k in a)  # noqa: E731
    assert gap(probabilities[1], probabilities[0]) < 1e-6
    assert gap(probabilities[2], probabilities[0]) < 1e-6
    assert gap(probabilities[3], probabilities[0]) > 1e-3  # the model does see the difference
