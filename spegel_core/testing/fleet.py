"""A small fleet on loopback for tests: :mod:`spegel_core.localcluster.fleet` plus a poller.

The fleet itself (:class:`Fleet`, :class:`FleetNode`) is public core API, also used
by ``spegel demo --fleet``; tests add :func:`until`::

    with Fleet(workdir, nodes=2, layer_sizes=(16 * 2**20,), rate=16e6) as fleet:
        a, b = fleet.nodes
        pull_a = a.start_pull(fleet.reference)
        until(lambda: a.ingest_size(fleet.layers[0]) is not None, 30, "A starts")
"""

from __future__ import annotations

import time
from collections.abc import Callable

from spegel_core.localcluster.fleet import Fleet, FleetNode

__all__ = ["Fleet", "FleetNode", "until"]


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
