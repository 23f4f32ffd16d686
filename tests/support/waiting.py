"""Waiting for conditions, never for clocks: a loaded machine only makes a test slower.

Deadlines are generous (30 s unless told) because a condition that holds returns at
once; only a test that is about to fail waits that long.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")
DEFAULT_TIMEOUT = 30.0


def wait_for(condition: Callable[[], T], timeout: float = DEFAULT_TIMEOUT,
             message: str = "condition", *, interval: float = 0.02,
             detail: Callable[[], str] | None = None) -> T:
    """Poll until `condition()` is truthy and return it; fail naming `message` after `timeout`.

    `detail`, if given, is called on failure and its text (a log, say) added to the error.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {message}{extra}")
        time.sleep(interval)


def stays(condition: Callable[[], object], seconds: float, *, interval: float = 0.02) -> bool:
    """True if `condition()` holds for the whole of `seconds` (checked often, fails early).

    For asserting that something does NOT happen: a loaded machine can only make the
    check weaker, never make a correct program fail it.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not condition():
            return False
        time.sleep(interval)
    return bool(condition())
