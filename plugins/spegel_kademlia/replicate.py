"""Records follow a growing network: re-announce a key once the network has doubled.

Pure: no I/O, no clock.

A provider record lives on the ``k`` nodes closest to its key *when it was announced*.
In a rollout the first nodes announce into a network of a handful; by the time it has
grown a hundredfold, the ``k`` closest nodes to their keys are others, and a lookup
converges on those. The Kademlia paper has each node that learns a newcomer closer to
a key it stores hand the record over; this is the equivalent the provider can do on
its own, without relaying anybody else's record: it re-announces a key when its
estimate of the network size has grown by ``factor`` since the key was last announced.

Why that suffices: the nodes that were among the ``k`` closest to a key when the
network had ``n`` nodes hold its record. Of the ``k`` closest in a network that has
grown to ``m <= factor * n`` nodes, each is one of the old nodes with probability
``n / m >= 1 / factor``, and an old node among the ``k`` closest now was among them
then. A lookup asks the ``k`` closest, so it misses the record only when none of them
is old: about ``(1 - 1 / factor) ** k``, 1e-6 with ``factor`` 2 and ``k`` 20.

The size comes from the routing table: the ``k`` contacts closest to the own id sit at
XOR distances (as fractions of the id space) that grow like ``i / N``; a least-squares
fit through the origin of ``i`` against those distances gives ``N``. A node's closest
buckets are never full, so it knows every node that reached it from nearby.

Cost: a node that joined at size ``n`` re-announces each key ``log_factor(N / n)``
times during a rollout to ``N`` nodes, ``1 / ln(factor)`` times on average over the
nodes (1.44 with ``factor`` 2), and never in a steady state. The re-announces go
through the router's reprovide queue, so the cap on concurrent provides paces them.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence

from spegel_kademlia.ids import ID_BITS, Contact

_SPACE = float(1 << ID_BITS)


def estimate_size(own_id: bytes, closest: Sequence[Contact], *, known: int, k: int) -> float:
    """The number of nodes in the network, this one included.

    :param own_id: this node's id.
    :param closest: the contacts closest to ``own_id`` (at least ``k`` of them when the
        table has that many), in any order.
    :param known: contacts in the routing table (the network has at least one more).
    :param k: how many of the closest contacts to fit.
    """
    floor = float(known + 1)
    if known < k or len(closest) < k:
        return floor  # a small table: the node knows (nearly) everybody
    own = int.from_bytes(own_id, "big")
    distances = sorted((int.from_bytes(c.node_id, "big") ^ own) / _SPACE for c in closest)[:k]
    num = sum(i * d for i, d in enumerate(distances, 1))
    den = sum(d * d for d in distances)
    return max(floor, num / den + 1) if den > 0 else floor


class GrowthWatch:
    """Which advertised keys are due again because the network has grown.

    :param factor: growth of the estimated size since a key's last announcement that
        makes it due again (at least 1.1).
    """

    def __init__(self, factor: float = 2.0) -> None:
        if factor < 1.1:
            raise ValueError("factor must be at least 1.1")
        self.factor = factor
        self._size_at: dict[str, float] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self.triggered = 0

    def announced(self, key: str, size: float) -> None:
        """``key`` was just announced while the network had about ``size`` nodes."""
        self._size_at[key] = size
        heapq.heappush(self._heap, (size * self.factor, next(self._seq), key))
        if len(self._heap) > 2 * len(self._size_at) + 64:
            self._heap = [entry for entry in self._heap if self._live(entry)]
            heapq.heapify(self._heap)

    def forget(self, key: str) -> None:
        """``key`` is no longer advertised."""
        self._size_at.pop(key, None)

    def next_size(self) -> float | None:
        """The smallest size at which a key comes due, None when none is watched."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def due(self, size: float) -> list[str]:
        """Keys announced when the network was at most ``size / factor``.

        Each is forgotten until it is :meth:`announced` again.
        """
        out: list[str] = []
        while True:
            self._drop_stale()
            if not self._heap or self._heap[0][0] > size:
                break
            _, _, key = heapq.heappop(self._heap)
            del self._size_at[key]
            out.append(key)
        self.triggered += len(out)
        return out

    def _live(self, entry: tuple[float, int, str]) -> bool:
        at = self._size_at.get(entry[2])
        return at is not None and at * self.factor == entry[0]

    def _drop_stale(self) -> None:
        while self._heap and not self._live(self._heap[0]):
            heapq.heappop(self._heap)

    def __len__(self) -> int:
        return len(self._size_at)

    def __repr__(self) -> str:
        return f"<GrowthWatch keys={len(self._size_at)} factor={self.factor:g}>"
