"""A small fleet on loopback for tests: :mod:`spegel_core.localcluster.fleet` plus a poller.

The fleet itself (:class:`Fleet`, :class:`FleetNode`) is public core API, also used
by ``spegel demo --fleet``; tests add :func:`until`::

    with Fleet(workdir, nodes=2, layer_sizes=(16 * 2**20,), rate=16e6) as fleet:
        a, b = fleet.nodes
        pull_a = a.start_pull(fleet.reference)
        until(lambda: a.ingest_size(fleet.layers[0]) is not None, 30, "A starts")
"""

from __future__ import annotations

from spegel_core.localcluster.fleet import Fleet, FleetNode
from spegel_core.testing.waiting import until

__all__ = ["Fleet", "FleetNode", "until"]
