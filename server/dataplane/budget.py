"""A server-wide budget of pixels being decoded at once (thread-safe; used by the decode workers).

Decoding costs memory in proportion to the image's pixels (server/dataplane/decode.py: the decoded frame
plus a constant), so a cap on the pixels in decoding at any moment caps the decoders' memory,
whatever mix of requests arrives. A worker reserves an image's pixels before decoding it and
gives them back after; one image larger than the whole budget may still decode, alone.
"""

from __future__ import annotations

import contextlib
import threading
import time

from server.errors import Overloaded


class PixelBudget:
    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"a pixel budget must be positive, got {capacity}")
        self.capacity = capacity
        self._used = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, pixels: int, timeout: float | None):
        """Hold `pixels` of the budget for the `with` block; Overloaded after `timeout` seconds
        of waiting (None: wait as long as it takes: other decodes always finish)."""
        pixels = min(pixels, self.capacity)
        give_up = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._used + pixels > self.capacity:
                left = None if give_up is None else give_up - time.monotonic()
                if left is not None and left <= 0:
                    raise Overloaded(f"the server is decoding {self._used:,} pixels, at its limit "
                                     f"of {self.capacity:,}; retry shortly", retry_after=0.1)
                self._cond.wait(left)
            self._used += pixels
        try:
            yield
        finally:
            with self._cond:
                self._used -= pixels
                self._cond.notify_all()
