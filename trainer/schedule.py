"""How long a run may train and how fast it learns: the time budget's clock and the learning-rate
schedules.

Kept apart from the loop because both are pure arithmetic on time and steps, tested alone. A time
budget covers the evaluations too: the clock keeps back what the next evaluation will cost, by
the latest measurement, so training stops while there is still time to evaluate. The "budget"
schedule spreads a warm-up and a cosine decay over that training time instead of over epochs, so
a short run ends at a low learning rate however fast the machine is.
"""

from __future__ import annotations

import math
import time

from trainer.models import Recipe

MAX_RESERVE = 0.5  # of the budget
BUDGET_WARMUP = 0.1  # of the budget's training time
# The probe (evaluated twice before training, the second time timed) is a fixed amount of work:
# 32 images at 96 px, ~380 at 28 px (at 32 a LeNet's time is all per-call overhead, and its
# estimate for 10,000 images came out 5x too long), 6 at 224 px.
PROBE_PIXELS = 32 * 96 * 96


class BudgetClock:
    """The time side of `--time-budget`: how long the run has gone, how much to keep back for the
    evaluation that ends it, and how far through its training time it is (for the schedule)."""

    def __init__(self, budget: float | None, eval_images: int):
        self.budget, self.eval_images = budget, eval_images
        self.started = time.perf_counter()
        self.eval_s_per_image: float | None = None  # measured by the probe, then each evaluation

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def reserve(self) -> float:
        """Seconds kept back for the final evaluation, as the last timed evaluation (or the
        probe) predicts, and never more than half the budget: a small probe on a busy machine
        can be far off, and must not end the run before it has begun."""
        if self.eval_s_per_image is None:
            return 0.0
        estimate = self.eval_images * self.eval_s_per_image
        return min(estimate, MAX_RESERVE * self.budget) if self.budget is not None else estimate

    def fraction(self) -> float:
        """Share of the training time (the budget less the reserve) used so far, in [0, 1]."""
        if self.budget is None:
            return 0.0
        train_time = self.budget - self.reserve()
        return 1.0 if train_time <= 0 else min(1.0, self.elapsed() / train_time)

    def spent(self) -> bool:
        return self.budget is not None and self.elapsed() + self.reserve() >= self.budget

    def timed_evaluation(self, evaluate_fn, images: int | None = None) -> float:
        """Run `evaluate_fn` (an evaluation of `images` test images, by default all of the
        run's) and keep its time per image for the next reserve."""
        t0 = time.perf_counter()
        accuracy = evaluate_fn()
        self.eval_s_per_image = (time.perf_counter() - t0) / max(1, images or self.eval_images)
        return accuracy


def probe_images(input_side: int, eval_images: int, eval_batch_size: int) -> int:
    """How many test images the pre-training probe evaluates: PROBE_PIXELS' worth, within one
    evaluation batch and the evaluation itself."""
    return max(1, min(PROBE_PIXELS // input_side ** 2, eval_images, eval_batch_size))


def lr_factor(recipe: Recipe, step: int, steps_per_epoch: int, fraction: float = 0.0) -> float:
    """Multiplier of the base learning rate at `step` (or, for "budget", at `fraction` of the
    time budget's training time).

    constant: 1 throughout (d2l). cosine: a linear warm-up over the first epoch from 0.1 to 1
    (large momentum steps on Xavier-initialised nets otherwise diverge early), then a half cosine
    down to 0 at the last step. budget: the same shape over time: warm-up for the first 10% of
    the budget, then a half cosine that reaches 0 when the budget (less the final evaluation)
    is spent; a run of a minute or two never finishes an epoch of a 96-pixel model on a CPU, so
    an epoch-based schedule would never leave its warm-up.
    """
    if recipe.schedule == "constant":
        return 1.0
    if recipe.schedule == "budget":
        if fraction < BUDGET_WARMUP:
            return 0.1 + 0.9 * fraction / BUDGET_WARMUP
        return 0.5 * (1 + math.cos(math.pi * (fraction - BUDGET_WARMUP) / (1 - BUDGET_WARMUP)))
    warmup, total = steps_per_epoch, recipe.epochs * steps_per_epoch
    if step < warmup:
        return 0.1 + 0.9 * step / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
