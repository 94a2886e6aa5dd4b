"""server/decode.py's framing of photos: an odd margin puts the extra pixel before the object."""

import numpy as np
from PIL import Image

from server.decode import decode_encoded
from tests.server.images import encode


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
