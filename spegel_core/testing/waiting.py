"""Waiting for a state with a deadline, for tests: poll, never a fixed sleep.

:func:`until` blocks (tests driving node processes); :func:`eventually` is its
asyncio twin (tests running routers and stores in the test's own loop).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["eventually", "until"]


def until(predicate: Callable[[], bool], timeout: float, what: str,
          interval: float = 0.02) -> float:
    """Poll ``predicate`` until true (returns the seconds it took) or raise after ``timeout``.

    :param predicate: the condition to wait for.
    :param timeout: how long to wait, seconds.
    :param what: the message of the :class:`TimeoutError`.
    :param interval: seconds between polls.
    :returns: the seconds it took.
    :raises TimeoutError: ``predicate`` was still false after ``timeout``.
    """
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError(what)
        time.sleep(interval)
    return time.monotonic() - started


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0,  # noqa: ASYNC109
                     what: str = "condition not met in time",
                     interval: float = 0.02) -> float:
    """Poll ``predicate`` between loop turns until true, or fail the test after ``timeout``.

    :param predicate: the condition to wait for.
    :param timeout: how long to wait, seconds.
    :param what: the message of the :class:`AssertionError`.
    :param interval: seconds between polls (the loop runs meanwhile).
    :returns: the seconds it took.
    :raises AssertionError: ``predicate`` was still false after ``timeout``.
    """
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, what
        await asyncio.sleep(interval)
    return time.monotonic() - started
