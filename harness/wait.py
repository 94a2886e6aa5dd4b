"""Waiting on an observable state, never on a guess of how long something takes."""

from __future__ import annotations

import asyncio
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
        _give_up_after(deadline, timeout, what, result)
        time.sleep(every)
    return result


async def until_async(value: Callable[[], T], timeout: float = 30.0, what: str = "",
                      every: float = 0.005) -> T:
    """`until` for a coroutine: the event loop goes on running between the calls of `value()`
    (the state waited for is often made by a task of that loop)."""
    deadline = time.monotonic() + timeout
    while not (result := value()):
        _give_up_after(deadline, timeout, what, result)
        await asyncio.sleep(every)
    return result


def _give_up_after(deadline: float, timeout: float, what: str, result: object) -> None:
    if time.monotonic() > deadline:
        raise AssertionError(f"{what or 'the state waited for'} did not come within "
                             f"{timeout:g} s (last: {result!r})")
