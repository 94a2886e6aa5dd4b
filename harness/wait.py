"""Waiting on an observable state, never on a guess of how long something takes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def until(value: Callable[[], T], timeout: float = 30.0, what: str = "",
          every: float = 0.02) -> T:
    """Call `value()` every `every` seconds until it returns something truthy, and return that;
    AssertionError (naming `what` and the last value) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := value()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what or 'the state waited for'} did not come within "
                                 f"{timeout:g} s (last: {result!r})")
        time.sleep(every)
    return result
