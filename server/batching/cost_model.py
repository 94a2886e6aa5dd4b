"""How long a model takes to run a batch, learned from every run, by batch size (pure; no threads).

Admission and the batcher's deadline checks ask two questions of it:

- `optimistic(images, max_batch)`: the least time `images` queued images could take: full batches
  of `max_batch`, then the rest as one batch, each at the best time ever seen for its size. A
  request is refused only when even this exceeds its deadline, so a request that would fit is
  never refused (whatever mix of sizes ran before it).
- `expected(images, max_batch)`: the usual time (moving averages), for retry hints.

Times are kept per batch size, not per image: a batch of 3 costs about what a batch of 1 does
(the fixed cost of a run dominates a small model), not 3 times it. A size never seen is priced from
the sizes around it: for `optimistic`, the best time of the largest size seen below it (a batch
does not run faster for holding more images); for `expected`, the line between its two neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

_ALPHA = 0.2  # weight of the newest run in the moving average


@dataclass
class _Stats:
    mean: float  # seconds per batch of this size
    best: float


class CostModel:
    def __init__(self) -> None:
        self._sizes: dict[int, _Stats] = {}

    def observe(self, batch: int, seconds: float) -> None:
        """Record one run of `batch` images that took `seconds`."""
        seconds = max(seconds, 0.0)
        s = self._sizes.get(batch)
        if s is None:
            self._sizes[batch] = _Stats(seconds, seconds)
        else:
            s.mean += _ALPHA * (seconds - s.mean)
            s.best = min(s.best, seconds)

    def optimistic(self, images: int, max_batch: int) -> float:
        """Seconds `images` images take at least, run in batches of up to `max_batch`."""
        return self._estimate(images, max_batch, best=True)

    def expected(self, images: int, max_batch: int) -> float:
        """Seconds `images` images usually take, run in batches of up to `max_batch`."""
        return self._estimate(images, max_batch, best=False)

    def _estimate(self, images: int, max_batch: int, best: bool) -> float:
        if images <= 0 or not self._sizes:
            return 0.0
        full, rest = divmod(images, max_batch)
        total = full * self._batch(max_batch, best) if full else 0.0
        return total + self._batch(rest, best) if rest else total

    def _batch(self, size: int, best: bool) -> float:
        """Seconds one batch of `size` images takes (at best, or usually)."""
        s = self._sizes.get(size)
        if s is not None:
            return s.best if best else s.mean
        below = max((k for k in self._sizes if k < size), default=None)
        above = min((k for k in self._sizes if k > size), default=None)
        if below is None:  # only larger batches seen: scale the smallest of them per image
            s = self._sizes[above]
            return (s.best if best else s.mean) * size / above
        low = self._sizes[below]
        if best:
            return low.best
        if above is None:  # only smaller batches seen: scale the largest of them per image
            return low.mean * size / below
        high = self._sizes[above]
        return low.mean + (high.mean - low.mean) * (size - below) / (above - below)
