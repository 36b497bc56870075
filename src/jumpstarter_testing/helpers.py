"""Small helpers for tests against a lab."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(
    fn: Callable[[], T],
    *,
    timeout: float = 5,
    interval: float = 0.05,
    exceptions: type[BaseException] | tuple[type[BaseException], ...] = (AssertionError,),
) -> T:
    """Call ``fn`` until it stops raising ``exceptions``; return its result.

    Polls every ``interval`` seconds; past ``timeout`` seconds the last exception is re-raised.

    >>> attempts = []
    >>> def booted():
    ...     attempts.append(1)
    ...     assert len(attempts) >= 3, "not yet"
    ...     return "login:"
    >>> eventually(booted, interval=0)
    'login:'
    >>> eventually(lambda: 1 / 0, timeout=0.01, exceptions=ZeroDivisionError)
    Traceback (most recent call last):
    ...
    ZeroDivisionError: division by zero
    """
    if timeout < 0 or interval < 0:
        raise ValueError(f"eventually: timeout ({timeout}) and interval ({interval}) must not be negative")
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except exceptions:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise
        time.sleep(min(interval, remaining))
