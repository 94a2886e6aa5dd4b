"""Image bytes -> the model's input: a 28x28 uint8 array, light object on black (pure; no grpc).

`decode_encoded` handles PNG, JPEG, BMP, GIF and WebP of any size and mode; `decode_raw` takes the
dataset's own 784-byte form as it is. Both raise `DecodeError` with a reason a person can act on.

What `decode_encoded` does, in order:

1. Refuses a decompression bomb from the header alone (`open_header`): `Image.open` reads only the
   header, and an image whose width x height exceeds `max_pixels` is refused before any pixel is
   decoded (PIL's own `DecompressionBombError`, raised for far larger images, is caught too). The
   server weighs the header's size against its pixel budgets before `decode_opened` decodes it.
2. Takes the first frame (GIF/WebP animations) and makes it grayscale (ITU-R 601 luma), turned
   upright by its EXIF orientation tag (a phone photo taken sideways is stored sideways):
   transparency (RGBA, LA, PA, palette with a transparent index) is composited over white, as a
   viewer shows it; 16-bit and 32-bit grayscale (I;16*, I) are scaled to 8 bits (divided by 257,
   not clipped; a 32-bit image outside 0..65535 is stretched from its min..max); float (F) images
   in 0..1 are scaled by 255; 1-bit, CMYK, YCbCr and the rest go through PIL's conversions.
3. Inverts when asked to, or (AUTO) when the border is light: the median of the outermost
   ring of pixels is above mid-grey. Fashion-MNIST is a light object on black; a photo or a
   drawing is usually a dark object on a light background.
4. An image that is already 28x28 stops here: it passes through unchanged (so samples/*.png decode
   to exactly the dataset's pixels).
5. Anything else is brought to Fashion-MNIST's framing, whose objects fill their frame:
   - the background level (the border's median after inversion) is mapped to 0 and the rest
     stretched to 0..255, so a grey or noisy background does not become a grey frame;
   - the image is cropped to the bounding box of the pixels clearly above that background
     (more than 10% of the range); a blank image is kept whole;
   - the crop is scaled (Lanczos, aspect ratio kept) so that its long side is 28 pixels,
     sharpened (unsharp mask, radius 1, 30%) as Fashion-MNIST's own conversion sharpened after
     its resize, and padded centred with black to 28x28; an odd margin puts the extra pixel
     before the object (above, to the left), as Fashion-MNIST does. Measured with bench/photos.py
     (test images as 256-512 px JPEG photos): the extra pixel after the object lost 1.7 points of
     accuracy, before it 0.3; the sharpening raised the photo/raw agreement of the demo's
     densenet from 95.4% to 97.0% on 3,000 test images it was not chosen on.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image, ImageFile, ImageFilter

from model_contract import SIDE
from server.admission import DEFAULT_MAX_PIXELS
from server.errors import DecodeError

RAW_BYTES = SIDE * SIDE
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
INVERSIONS = ("auto", "always", "never")
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
WORK_SIDE = 512  # the gray image is box-reduced to at most this long side before any pixel math
STRIP_PIXELS = 1 << 18  # pixels converted at a time (bounds the transient arrays)
_EXIF_ORIENTATION = 0x0112  # phones store a sideways photo as it was shot, plus this tag
_OBJECT_THRESHOLD = 0.10  # of the range above the background: what counts as "object" for the crop
_SHARPEN = ImageFilter.UnsharpMask(radius=1, percent=30, threshold=0)  # see step 5 above

assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # a truncated file must fail, not decode half-grey


def decode_raw(data: bytes) -> np.ndarray:
    """784 bytes -> uint8 [28, 28], used as they are (row-major, light object on black)."""
    if len(data) != RAW_BYTES:
        raise DecodeError(f"a raw image must be exactly {RAW_BYTES} bytes (28x28 uint8), "
                          f"got {len(data)}")
    return np.frombuffer(data, dtype=np.uint8).reshape(SIDE, SIDE).copy()


def decode_encoded(data: bytes, inversion: str = "auto",
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes -> uint8 [28, 28]; see the module docstring for every step."""
    return decode_opened(open_header(data, max_pixels), inversion)


def open_header(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read only the header: format and size, refused when over `max_pixels`. Cheap, so the caller
    can weigh the image (width x height) against its budgets before paying for `decode_opened`."""
    if not data:
        raise DecodeError("empty image (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as e:
        raise DecodeError(f"too many pixels (PIL refused it as a decompression bomb: {e})") from None
    except Image.UnidentifiedImageError:
        raise DecodeError("not a PNG, JPEG, BMP, GIF or WebP image "
                          f"(first bytes {data[:8]!r})") from None
    except Exception as e:  # noqa: BLE001 - a broken header can raise nearly anything in PIL
        raise DecodeError(f"cannot read the image header ({type(e).__name__}: {e})") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise DecodeError(f"empty image size {width}x{height}")
    if width * height > max_pixels:
        raise DecodeError(f"too many pixels: {width}x{height} = {width * height:,} is over the "
                          f"limit of {max_pixels:,}")
    return image


def decode_opened(image: Image.Image, inversion: str = "auto") -> np.ndarray:
    """An image from `open_header` -> uint8 [28, 28]."""
    if inversion not in INVERSIONS:
        raise ValueError(f"inversion must be one of {INVERSIONS}, got {inversion!r}")
    image = _load(image)
    gray = _orient(_grayscale(image), _orientation(image))
    if inversion == "always" or (inversion == "auto" and _border_is_light(gray)):
        gray = 255 - gray
    if gray.shape == (SIDE, SIDE):
        return gray
    return _fit(_crop_to_object(_remove_background(gray)))


def _load(image: Image.Image) -> Image.Image:
    """Decode the first frame's pixels (a big JPEG at 1/2..1/8 size, by DCT scaling)."""
    try:
        if image.format == "JPEG" and image.mode in ("RGB", "L", "YCbCr"):
            image.draft("L", (8 * SIDE, 8 * SIDE))  # still >= 224 px a side
        image.load()
    except Image.DecompressionBombError as e:
        raise DecodeError(f"too many pixels (PIL refused it as a decompression bomb: {e})") from None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated/corrupt data raises OSError, SyntaxError, ...
        raise DecodeError(f"truncated or corrupt {image.format} data "
                          f"({type(e).__name__}: {e})") from None
    return image


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1..8; 1 when absent, malformed or out of range). Read after
    `_load`, because a PNG may carry its eXIf chunk after the pixels."""
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not fail an otherwise good image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _orient(gray: np.ndarray, orientation: int) -> np.ndarray:
    """Turn the (already reduced) gray array upright as EXIF `orientation` says, the same
    transposition as `ImageOps.exif_transpose`, but on the <= WORK_SIDE array rather than on a
    second full-size copy of the decoded image."""
    turned = {1: gray, 2: gray[:, ::-1], 3: gray[::-1, ::-1], 4: gray[::-1], 5: gray.T,
              6: np.rot90(gray, -1), 7: gray.T[::-1, ::-1], 8: np.rot90(gray)}[orientation]
    return np.ascontiguousarray(turned)


def _grayscale(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> uint8 luma at most WORK_SIDE pixels a side; transparency over white.

    Memory is bounded by the decoded image itself plus a constant: the conversion works on
    horizontal strips of about STRIP_PIXELS, each reduced (box filter) as soon as it is gray, so
    no full-size int64/float or RGBA copy is ever made (converted whole, a 4096x4096 16-bit PNG
    costs ~1 GB in transient arrays)."""
    width, height = image.size
    factor = max(1, -(-max(width, height) // WORK_SIDE))
    rows = max(1, STRIP_PIXELS // (width * factor)) * factor
    to_gray = _strip_converter(image, rows)
    out = np.empty((-(-height // factor), -(-width // factor)), np.uint8)
    for top in range(0, height, rows):
        try:
            gray = to_gray(image.crop((0, top, width, min(height, top + rows))))
        except (ValueError, OSError) as e:
            raise DecodeError(f"cannot convert mode {image.mode} to grayscale ({e})") from None
        if factor > 1:
            gray = np.asarray(Image.fromarray(gray).reduce(factor))
        out[top // factor: top // factor + len(gray)] = gray
    return out


def _strip_converter(image: Image.Image, rows: int) -> Callable[[Image.Image], np.ndarray]:
    """The function that turns one strip of `image` into uint8 luma (16/32-bit and float images
    are scaled by the whole image's range, found in a first pass over the strips)."""
    mode = image.mode
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in image.info):
        return _over_white
    if mode.startswith("I;16") or mode == "I":
        lo, hi = _value_range(image, rows)
        if lo < 0 or hi > 65535:
            return lambda strip: _stretch(np.asarray(strip).astype(np.float64), lo, hi)
        return lambda strip: _sixteen_to_eight(np.asarray(strip))
    if mode == "F":
        lo, hi = _value_range(image, rows)
        if lo >= 0.0 and hi <= 1.0:
            return lambda strip: np.rint(_finite(strip) * 255.0).astype(np.uint8)
        return lambda strip: _stretch(_finite(strip), lo, hi)
    if mode in ("L", "1", "P", "RGB"):
        return lambda strip: np.asarray(strip.convert("L"))
    return lambda strip: np.asarray(strip.convert("RGB").convert("L"))  # CMYK, YCbCr, LAB, ...


def _over_white(strip: Image.Image) -> np.ndarray:
    rgba = strip.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("L"))


def _finite(strip: Image.Image) -> np.ndarray:
    return np.nan_to_num(np.asarray(strip, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def _value_range(image: Image.Image, rows: int) -> tuple[float, float]:
    """(min, max) over the whole image (NaN and infinities count as 0), strip by strip."""
    width, height = image.size
    lo, hi = np.inf, -np.inf
    for top in range(0, height, rows):
        strip = image.crop((0, top, width, min(height, top + rows)))
        a = _finite(strip) if image.mode == "F" else np.asarray(strip).astype(np.int64)
        lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
    return lo, hi


def _sixteen_to_eight(a: np.ndarray) -> np.ndarray:
    return ((a.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)  # rounded, not clipped


def _stretch(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.clip(np.rint((a - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def _border(gray: np.ndarray) -> np.ndarray:
    """The outermost ring of pixels."""
    if min(gray.shape) <= 2:
        return gray.ravel()
    return np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])


def _border_is_light(gray: np.ndarray) -> bool:
    return float(np.median(_border(gray))) > 127.5


def _remove_background(gray: np.ndarray) -> np.ndarray:
    """Map the background level (the border's median) to 0 and stretch the rest to 0..255."""
    background = float(np.median(_border(gray)))
    if background <= 0.0 or background >= 255.0:
        return gray
    scaled = (gray.astype(np.float32) - background) * (255.0 / (255.0 - background))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _crop_to_object(gray: np.ndarray) -> np.ndarray:
    """Crop to the bounding box of the pixels clearly above the (now black) background."""
    mask = gray > int(255 * _OBJECT_THRESHOLD)
    if not mask.any():
        return gray
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return gray[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _fit(gray: np.ndarray) -> np.ndarray:
    """Scale so the long side is 28 (aspect kept), sharpen, pad centred with black to 28x28."""
    height, width = gray.shape
    scale = SIDE / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = Image.fromarray(gray).resize((new_w, new_h), Image.Resampling.LANCZOS,
                                           reducing_gap=3.0).filter(_SHARPEN)
    out = np.zeros((SIDE, SIDE), np.uint8)
    top, left = (SIDE + 1 - new_h) // 2, (SIDE + 1 - new_w) // 2  # odd margin: extra pixel first
    out[top:top + new_h, left:left + new_w] = np.asarray(resized)
    return out
