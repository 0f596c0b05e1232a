"""The last requests a node answered, and running totals, for the debug page."""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass

from spegel_core.protocols import MirrorRequest, Source


@dataclass(frozen=True, slots=True)
class Seen:
    """One mirror request as the debug page shows it."""

    at: float  # wall clock, seconds
    request: MirrorRequest


class RecentRequests:
    """A ring buffer of the last ``size`` mirror requests, plus totals since start.

    ``hits`` and ``misses`` count what Spegel's ``cache`` label counts: requests the
    node could not answer from its own store, served by a peer (hit) or by nobody
    (miss, a 404). ``local`` counts requests answered from the node's own store.
    """

    def __init__(self, size: int = 100) -> None:
        self._ring: deque[Seen] = deque(maxlen=size)
        self.hits = 0
        self.misses = 0
        self.local = 0
        self.bytes: Counter[str] = Counter()

    def add(self, request: MirrorRequest) -> None:
        """Remember ``request`` and count it as a hit, a miss or local."""
        self._ring.append(Seen(time.time(), request))
        if request.source is Source.PEER:
            self.hits += 1
        elif request.source is Source.NONE:
            self.misses += 1
        else:
            self.local += 1

    @property
    def hit_ratio(self) -> float | None:
        """Hits over hits and misses; None before the first request that went to peers."""
        asked = self.hits + self.misses
        return self.hits / asked if asked else None

    def newest_first(self) -> Iterator[Seen]:
        """The remembered requests, newest first."""
        return reversed(self._ring)

    def __len__(self) -> int:
        return len(self._ring)
