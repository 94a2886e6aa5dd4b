"""server/dataplane/imagefile.py's framing of photos: an odd margin puts the extra pixel before the object, and
a photo of a dataset image comes back about as sharp as the image was."""

import numpy as np
import pytest
from PIL import Image

from bench.photos import render_photo
from server.dataplane.imagefile import decode_encoded
from tests.server.images import encode
from tests.serving_fixtures import SAMPLES


def test_an_odd_margin_puts_the_extra_pixel_above_the_object():
    # 60x27 -> 28x13 (12.6 rounds to 13): 15 rows of margin, 8 above and 7 below, as
    # Fashion-MNIST places its objects (bench/photos.py measured the difference in accuracy)
    out = decode_encoded(encode(Image.new("L", (60, 27), 255)), "never")
    rows = np.flatnonzero(out.max(axis=1) > 0)
    assert (rows[0], rows[-1]) == (8, 20)
    # and the same on the other axis
    out = decode_encoded(encode(Image.new("L", (27, 60), 255)), "never")
    cols = np.flatnonzero(out.max(axis=0) > 0)
    assert (cols[0], cols[-1]) == (8, 20)


def edge_contrast(a: np.ndarray) -> float:
    """Mean absolute 4-neighbour Laplacian: how much fine texture and edges an image has."""
    a = a.astype(np.float64)
    return float(np.abs(4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2]
                        - a[1:-1, 2:]).mean())


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("*.png")))
def test_a_photo_of_a_dataset_image_keeps_its_sharpness(name):
    # Enlarging to 256-512 px, JPEG and reducing back blur the texture the models learned from;
    # the decode sharpens after its resize, as Fashion-MNIST's conversion did. Measured on the ten
    # samples: 0.81-0.91 of the raw image's edge contrast with it, 0.69-0.77 without.
    raw = np.asarray(Image.open(SAMPLES / name))
    photo = render_photo(raw, np.random.default_rng(0))
    assert edge_contrast(decode_encoded(photo)) >= 0.8 * edge_contrast(raw)
