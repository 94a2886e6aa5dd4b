"""server/dataplane/imagefile.py: pure bytes -> 28x28 uint8, every format and mode the API promises."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageOps

from server.dataplane import imagefile
from server.dataplane.imagefile import decode_encoded, decode_raw
from server.errors import DecodeError
from tests.serving_fixtures import SAMPLES
from tests.server.images import encode, huge_png, object_on

SAMPLE_NAMES = sorted(json.loads((SAMPLES / "index.json").read_text()))


def sample_pixels(name: str) -> np.ndarray:
    return np.asarray(Image.open(SAMPLES / name))


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_dataset_sized_sample_passes_through_unchanged(name):
    data = (SAMPLES / name).read_bytes()
    expected = sample_pixels(name)
    assert expected.shape == (28, 28)
    np.testing.assert_array_equal(decode_encoded(data), expected)
    np.testing.assert_array_equal(decode_encoded(data, "never"), expected)


def test_raw_is_used_as_it_is():
    pixels = sample_pixels("bag.png")
    np.testing.assert_array_equal(decode_raw(pixels.tobytes()), pixels)


@pytest.mark.parametrize("length", [0, 1, 783, 785, 784 * 3])
def test_raw_of_another_length_is_refused(length):
    with pytest.raises(DecodeError, match="exactly 784 bytes"):
        decode_raw(b"\0" * length)


def test_light_background_is_inverted():
    pixels = sample_pixels("ankle_boot.png")
    dark_on_light = encode(Image.fromarray(255 - pixels))
    np.testing.assert_array_equal(decode_encoded(dark_on_light), pixels)


def test_inversion_can_be_forced_either_way():
    pixels = sample_pixels("sneaker.png")
    data = encode(Image.fromarray(pixels))
    np.testing.assert_array_equal(decode_encoded(data, "always"), 255 - pixels)
    light = encode(Image.fromarray(255 - pixels))
    np.testing.assert_array_equal(decode_encoded(light, "never"), 255 - pixels)
    with pytest.raises(ValueError):
        decode_encoded(data, "sometimes")


def test_aspect_ratio_is_kept_and_padding_is_centred_black():
    # a 60x30 white object that fills its 60x30 image: long side -> 28, so 28x14, centred rows 7..20
    out = decode_encoded(encode(Image.new("L", (60, 30), 255)), "never")
    rows = np.flatnonzero(out.max(axis=1) > 0)
    assert (rows[0], rows[-1]) == (7, 20)
    assert out[:7].max() == 0 and out[21:].max() == 0
    assert out[7:21].min() > 200


def test_larger_image_is_cropped_to_its_object():
    # a 40x30 object in a 600x400 canvas: cropped, so the object fills the frame's width
    a = np.zeros((400, 600), np.uint8)
    a[100:130, 200:240] = 200
    out = decode_encoded(encode(Image.fromarray(a)))
    cols = np.flatnonzero(out.max(axis=0) > 0)
    assert (cols[0], cols[-1]) == (0, 27)
    assert out.max() > 150


def test_grey_photo_background_becomes_black():
    out = decode_encoded(encode(object_on(200, size=(90, 60), value=20), "JPEG", quality=95))
    assert out[0].max() < 20 and out[-1].max() < 20  # background (padding rows) is black
    assert out[14, 14] > 200  # the dark object, inverted, is light


def test_blank_image_decodes_to_black():
    assert decode_encoded(encode(Image.new("L", (50, 50), 255))).max() == 0


FORMAT_MODES = [
    ("PNG", "L"), ("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "LA"), ("PNG", "P"), ("PNG", "1"),
    ("PNG", "I;16"),
    ("JPEG", "L"), ("JPEG", "RGB"), ("JPEG", "CMYK"),
    ("BMP", "L"), ("BMP", "RGB"), ("BMP", "P"), ("BMP", "1"),
    ("GIF", "P"), ("GIF", "L"),
    ("WEBP", "RGB"), ("WEBP", "RGBA"),
]


def _in_mode(image: Image.Image, mode: str) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray(np.asarray(image).astype(np.uint16) * 257)
    return image.convert(mode)


@pytest.mark.parametrize("fmt,mode", FORMAT_MODES)
@pytest.mark.parametrize("size", [(28, 28), (84, 56)])
def test_every_format_and_mode_decodes_to_the_object(fmt, mode, size):
    """A light object on a dark background, saved in each format and mode, decodes to a light
    object (in the middle) on black (at the corners)."""
    box = (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4)
    image = _in_mode(object_on(0, size=size, box=box, value=255), mode)
    out = decode_encoded(encode(image, fmt), "auto")
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert out[14, 14] > 200, (fmt, mode)
    assert max(out[0, 0], out[0, 27], out[27, 0], out[27, 27]) < 40, (fmt, mode)


def test_16_bit_is_scaled_to_8_bits_not_clipped():
    a = np.array([[0, 257 * 64, 257 * 128, 65535]] * 28 * 7, np.uint16).reshape(28, 28)
    out = decode_encoded(encode(Image.fromarray(a)), "never")
    np.testing.assert_array_equal(out[0, :4], [0, 64, 128, 255])


def test_transparency_is_composited_over_white():
    # an opaque black object on a fully transparent background: a viewer shows black on white,
    # so it is inverted to white on black
    a = np.zeros((40, 40, 4), np.uint8)
    a[15:25, 10:30] = (0, 0, 0, 255)  # 20 wide, 10 high: padded rows above and below
    for image in (Image.fromarray(a, "RGBA"), Image.fromarray(a, "RGBA").convert("LA")):
        out = decode_encoded(encode(image))
        assert out[14, 14] > 200 and out[0, 0] == 0, image.mode


def test_palette_with_transparent_index():
    p = Image.new("P", (40, 40), 0)
    p.putpalette([0, 0, 0, 0, 0, 0] + [0] * 762)  # index 0 and 1: both black
    p.paste(1, (10, 15, 30, 25))
    out = decode_encoded(encode(p, "PNG", transparency=0))  # index 0 is transparent -> white
    assert out[14, 14] > 200 and out[0, 0] == 0


def test_gif_animation_uses_the_first_frame():
    frames = [object_on(0, size=(28, 28), box=(4, 4, 24, 24), value=255).convert("P"),
              Image.new("P", (28, 28), 0)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_encoded(data)[14, 14] > 200


def test_32_bit_and_float_grayscale():
    # no format the API takes is written as mode I or F by PIL here; the decoder still handles them
    sixteen_in_i = imagefile._grayscale(Image.fromarray(np.array([[0, 257 * 100], [65535, 1]], np.int32)))
    np.testing.assert_array_equal(sixteen_in_i, [[0, 100], [255, 0]])
    wide = imagefile._grayscale(Image.fromarray(np.array([[-5, 0], [100000, 7]], np.int32)))
    assert wide.min() == 0 and wide.max() == 255
    floats = imagefile._grayscale(Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]],
                                                                   np.float32)))
    np.testing.assert_array_equal(floats, [[0, 128], [255, 64]])


@pytest.mark.parametrize("data,reason", [
    (b"", "empty"),
    (b"\0" * 100, "not a PNG, JPEG"),
    (np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(), "not a PNG, JPEG"),
    (b"GIF89a" + b"\xff" * 40, None),
    (b"%PDF-1.4 not an image", "not a PNG, JPEG"),
])
def test_undecodable_bytes_raise_decode_error(data, reason):  # reason None: any message
    with pytest.raises(DecodeError, match=reason):
        decode_encoded(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_truncated_files_raise_decode_error(fmt):
    noise = np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)
    data = encode(Image.fromarray(noise), fmt)
    with pytest.raises(DecodeError):
        decode_encoded(data[: len(data) // 2])


def test_decompression_bomb_is_refused_from_the_header():
    # 400 million pixels in ~50 kB: refused before decoding (by size, or by PIL's own guard)
    with pytest.raises(DecodeError, match="too many pixels"):
        decode_encoded(huge_png(20000, 20000))


def test_our_pixel_limit_is_checked_before_decoding():
    # 25 M pixels is below PIL's own guard: our limit refuses it first
    with pytest.raises(DecodeError, match=r"5000x5000 = 25,000,000 is over the limit of 1,000,000"):
        decode_encoded(huge_png(5000, 5000), max_pixels=1_000_000)
    assert decode_encoded(huge_png(500, 500), max_pixels=1_000_000).max() == 0


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_photo_like_rendering_of_a_sample_decodes_close_to_the_dataset_pixels(name):
    """The sample enlarged 7x, made dark-on-light, framed in a wide light-grey margin and saved as
    JPEG: inversion, background removal, crop and fit bring it back near the dataset's pixels."""
    original = sample_pixels(name)
    photo = ImageOps.invert(Image.fromarray(original).resize((196, 196), Image.Resampling.BICUBIC))
    photo = ImageOps.expand(photo, border=(60, 30), fill=235).convert("RGB")
    out = decode_encoded(encode(photo, "JPEG", quality=85))
    assert np.corrcoef(out.ravel(), original.ravel())[0, 1] > 0.5
