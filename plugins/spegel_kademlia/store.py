"""Provider records held for others, and the keys this node advertises (pure: no I/O).

:class:`ProviderStore` keeps, per key id, which nodes announced they hold it and until
when. :class:`AdvertisedKeys` keeps this node's own keys and when each is due to be
announced again (every ``interval`` +- ``jitter``, so keys spread out over time).
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass

from spegel_kademlia.ids import key_id


@dataclass(frozen=True, slots=True)
class ProviderRecord:
    """A node that announced it holds a key: its id, mirror address and expiry time."""

    node_id: bytes
    host: str
    port: int
    expires: float


class ProviderStore:
    """Provider records by key id, each valid for at most ``ttl`` seconds.

    :param ttl: the longest validity granted to a record (announcers may ask less).
    :param per_key: records kept per key; beyond it the one expiring soonest makes room.
    :param total: records kept in all; beyond it new records are refused.
    :param clock: monotonic seconds.
    """

    def __init__(
        self,
        *,
        ttl: float = 19 * 60,
        per_key: int = 64,
        total: int = 200_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.per_key = per_key
        self.total = total
        self._clock = clock
        self._records: dict[bytes, dict[bytes, ProviderRecord]] = {}
        self._size = 0
        self._last_sweep = clock()

    def add(self, key: bytes, node_id: bytes, host: str, port: int,
            ttl: float | None = None) -> bool:
        """Store (or renew) a record; False if refused because the store is full."""
        now = self._clock()
        lifetime = self.ttl if ttl is None else min(ttl, self.ttl)
        if lifetime <= 0:
            self.remove(key, node_id)
            return True
        record = ProviderRecord(node_id, host, port, now + lifetime)
        records = self._records.get(key)
        if records is not None and node_id in records:
            records[node_id] = record
            return True
        if self._size >= self.total:
            if now - self._last_sweep >= 1.0:  # a full store is not swept on every add
                self.sweep()
                records = self._records.get(key)
            if self._size >= self.total:
                return False
        if records is None:
            records = self._records[key] = {}
        if len(records) >= self.per_key:
            soonest = min(records.values(), key=lambda r: r.expires)
            if soonest.expires >= record.expires:
                return False
            del records[soonest.node_id]
            self._size -= 1
        records[node_id] = record
        self._size += 1
        return True

    def remove(self, key: bytes, node_id: bytes, host: str | None = None) -> bool:
        """Drop the record of ``node_id`` for ``key`` (only if it has ``host``, if given)."""
        records = self._records.get(key)
        if records is None:
            return False
        record = records.get(node_id)
        if record is None or (host is not None and record.host != host):
            return False
        del records[node_id]
        self._size -= 1
        if not records:
            del self._records[key]
        return True

    def get(self, key: bytes) -> list[ProviderRecord]:
        """Unexpired records of ``key``, the longest-lived first."""
        records = self._records.get(key)
        if not records:
            return []
        now = self._clock()
        live = [r for r in records.values() if r.expires > now]
        live.sort(key=lambda r: r.expires, reverse=True)
        return live

    def sweep(self) -> int:
        """Drop every expired record; returns how many were dropped."""
        now = self._last_sweep = self._clock()
        dropped = 0
        for key in list(self._records):
            records = self._records[key]
            expired = [node_id for node_id, r in records.items() if r.expires <= now]
            for node_id in expired:
                del records[node_id]
            dropped += len(expired)
            if not records:
                del self._records[key]
        self._size -= dropped
        return dropped

    @property
    def keys(self) -> int:
        """How many keys have at least one record (expired ones until swept)."""
        return len(self._records)

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"<ProviderStore records={self._size} keys={len(self._records)}>"


class AdvertisedKeys:
    """The keys this node announces, each with the time it is next due.

    :param interval: seconds between announcements of a key.
    :param jitter: each key's next time is ``interval`` plus a uniform offset in
        ``[-jitter, +jitter]``, so keys added together drift apart.
    """

    def __init__(
        self,
        *,
        interval: float = 15 * 60,
        jitter: float = 2 * 60,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._clock = clock
        self._due: dict[str, float] = {}
        self._ids: dict[str, bytes] = {}
        self._by_id: dict[bytes, str] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()

    def add(self, keys: Iterable[str]) -> list[str]:
        """Start advertising ``keys``; returns those that are new.

        New keys are scheduled one interval ahead: the caller announces them now.
        """
        new: list[str] = []
        for key in keys:
            if key in self._due:
                continue
            kid = self._ids[key] = key_id(key)
            self._by_id[kid] = key
            self._schedule(key, self._next_delay())
            new.append(key)
        return new

    def remove(self, keys: Iterable[str]) -> list[str]:
        """Stop advertising ``keys``; returns those that were advertised."""
        gone = [key for key in keys if self._due.pop(key, None) is not None]
        for key in gone:
            del self._by_id[self._ids.pop(key)]
        if len(self._heap) > 2 * len(self._due) + 64:
            self._heap = [(t, n, k) for t, n, k in self._heap if self._due.get(k) == t]
            heapq.heapify(self._heap)
        return gone

    def reschedule(self, key: str, delay: float) -> None:
        """Make ``key`` due again in ``delay`` seconds (e.g. sooner, after a failure)."""
        if key in self._due:
            self._schedule(key, delay)

    def take_due(self, limit: int) -> list[str]:
        """Up to ``limit`` keys that are due now, each rescheduled one interval ahead."""
        now = self._clock()
        out: list[str] = []
        while self._heap and len(out) < limit:
            when, _, key = self._heap[0]
            if self._due.get(key) != when:
                heapq.heappop(self._heap)  # stale entry (removed or rescheduled)
                continue
            if when > now:
                break
            heapq.heappop(self._heap)
            self._schedule(key, self._next_delay())
            out.append(key)
        return out

    def next_due_in(self) -> float | None:
        """Seconds until the next key is due (0 if one is due now); None when empty."""
        while self._heap:
            when, _, key = self._heap[0]
            if self._due.get(key) == when:
                return max(0.0, when - self._clock())
            heapq.heappop(self._heap)
        return None

    def key_id(self, key: str) -> bytes:
        """The key id of an advertised key."""
        return self._ids.get(key) or key_id(key)

    @property
    def ids(self) -> Collection[bytes]:
        """The key ids of the advertised keys (a live view)."""
        return self._by_id.keys()

    def key_of(self, kid: bytes) -> str | None:
        """The advertised key whose id is ``kid``, None if none is."""
        return self._by_id.get(kid)

    def __contains__(self, key: object) -> bool:
        return key in self._due

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._due))

    def __len__(self) -> int:
        return len(self._due)

    def _next_delay(self) -> float:
        return max(0.0, self.interval + self._rng.uniform(-self.jitter, self.jitter))

    def _schedule(self, key: str, delay: float) -> None:
        when = self._clock() + delay
        self._due[key] = when
        heapq.heappush(self._heap, (when, next(self._seq), key))

    def __repr__(self) -> str:
        return f"<AdvertisedKeys keys={len(self._due)} interval={self.interval:g}s>"
