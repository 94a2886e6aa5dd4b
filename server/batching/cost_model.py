"""How long a model takes to run a batch, learned from every run, by batch size (pure; no threads).

Admission and the batcher's deadline checks ask two questions of it:

- `optimistic(images, max_batch)`: the least time `images` queued images could take, at the best
  per-image cost ever seen. Refusing a request only when even this exceeds its deadline means a
  request that would fit is never refused (the old single moving average of whole-request times
  refused small requests for good after a few large ones).
- `expected(images, max_batch)`: the usual time (moving averages), for retry hints.

Batch sizes are grouped by powers of two (1, 2, 3-4, 5-8, ...): run time grows smoothly with the
batch, and a size never seen borrows the per-image cost of the nearest size that was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_ALPHA = 0.2  # weight of the newest run in the moving average


def bucket(batch: int) -> int:
    """The power of two at or above `batch`: the group a run of `batch` images is filed under."""
    return 1 << max(0, math.ceil(math.log2(batch)))


@dataclass
class _Stats:
    mean_per_image: float
    best_per_image: float


class CostModel:
    def __init__(self) -> None:
        self._stats: dict[int, _Stats] = {}

    def observe(self, batch: int, seconds: float) -> None:
        """Record one run of `batch` images that took `seconds`."""
        per_image = max(seconds, 0.0) / batch
        key = bucket(batch)
        s = self._stats.get(key)
        if s is None:
            self._stats[key] = _Stats(per_image, per_image)
        else:
            s.mean_per_image += _ALPHA * (per_image - s.mean_per_image)
            s.best_per_image = min(s.best_per_image, per_image)

    def optimistic(self, images: int, max_batch: int) -> float:
        """Seconds `images` images take at least, run in batches of up to `max_batch`."""
        return self._estimate(images, max_batch, best=True)

    def expected(self, images: int, max_batch: int) -> float:
        """Seconds `images` images usually take, run in batches of up to `max_batch`."""
        return self._estimate(images, max_batch, best=False)

    def _estimate(self, images: int, max_batch: int, best: bool) -> float:
        if images <= 0 or not self._stats:
            return 0.0
        full, rest = divmod(images, max_batch)
        total = full * max_batch * self._per_image(max_batch, best)
        if rest:
            total += rest * self._per_image(rest, best)
        return total

    def _per_image(self, batch: int, best: bool) -> float:
        key = bucket(batch)
        nearest = min(self._stats, key=lambda k: (abs(math.log2(k) - math.log2(key)), k))
        s = self._stats[nearest]
        return s.best_per_image if best else s.mean_per_image
