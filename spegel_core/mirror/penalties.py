"""The penalty list: which providers failed recently, and for what.

The rules (``docs/security.md``):

- A failure that says the peer cannot serve anything right now
  (:class:`~spegel_core.errors.PeerUnavailable`: refused connection, timeout, broken
  stream, 5xx) counts against the peer, for every key.
- A failure that says the peer does not serve *this* content
  (:class:`~spegel_core.errors.PeerContentError`: 404, digest or length mismatch,
  malformed head) counts against the pair (peer, key) only: one corrupt file or one
  stale advertisement does not hide the rest of what the peer holds.
- A penalised provider is never skipped: it is tried last, once every provider
  without a penalty has been tried (:meth:`PeerFetcher.providers
  <spegel_core.mirror.peers.PeerFetcher.providers>` does the ordering).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from spegel_core.errors import PeerContentError, PeerError
from spegel_core.protocols import Peer

log = logging.getLogger(__name__)

#: (peer, key) penalties kept at most; the oldest go first beyond this.
MAX_CONTENT_PENALTIES = 65536


class PenaltyList:
    """Penalties by peer and by (peer, key), each expiring after ``duration`` seconds.

    :param duration: how long a penalty lasts (``--mirror-peer-penalty``).
    :param clock: a monotonic clock (injectable for tests).
    :param max_contents: (peer, key) penalties kept at most; the oldest go first.
    """

    def __init__(self, duration: float, clock: Callable[[], float] = time.monotonic,
                 max_contents: int = MAX_CONTENT_PENALTIES) -> None:
        self.duration = duration
        self.max_contents = max_contents
        self._clock = clock
        self._peers: dict[tuple[str, int], float] = {}
        self._contents: dict[tuple[str, int, str], float] = {}
        #: Penalties given, by the failure's ``kind`` (digest, stream, status, connect).
        self.counts: Counter[str] = Counter()
        #: Penalties given, by whom they count against (``peer`` or ``content``).
        self.scopes: Counter[str] = Counter()

    def __repr__(self) -> str:
        return (f"<PenaltyList {len(self.peers)} peers, {len(self.contents)} contents, "
                f"{self.duration:.0f}s>")

    @staticmethod
    def scope_of(error: PeerError) -> str:
        """``content`` when ``error`` counts against (peer, key), else ``peer``."""
        return "content" if isinstance(error, PeerContentError) else "peer"

    def add(self, peer: Peer, error: PeerError, key: str) -> str:
        """Penalise ``peer`` for ``error`` met while fetching ``key``; returns the scope."""
        scope = self.scope_of(error)
        now = self._clock()
        self.counts[error.kind] += 1
        self.scopes[scope] += 1
        until = now + self.duration
        if scope == "peer":
            for expired in [p for p, t in self._peers.items() if t <= now]:
                del self._peers[expired]
            self._peers[(peer.host, peer.port)] = until
            log.warning("penalising peer %s for %.0fs: %s", peer.url, self.duration, error)
            return scope
        if len(self._contents) >= self.max_contents:
            for stale in [c for c, t in self._contents.items() if t <= now]:
                del self._contents[stale]
            while len(self._contents) >= self.max_contents:
                del self._contents[next(iter(self._contents))]
        self._contents.pop((peer.host, peer.port, key), None)  # re-inserted last
        self._contents[(peer.host, peer.port, key)] = until
        log.warning("penalising peer %s for %s for %.0fs: %s", peer.url, key[:80],
                    self.duration, error)
        return scope

    def penalised(self, peer: Peer, key: str | None = None) -> bool:
        """Whether ``peer`` is penalised (for every key, or for ``key``)."""
        now = self._clock()
        until = self._peers.get((peer.host, peer.port))
        if until is not None:
            if until > now:
                return True
            del self._peers[(peer.host, peer.port)]
        if key is None:
            return False
        until = self._contents.get((peer.host, peer.port, key))
        if until is None:
            return False
        if until > now:
            return True
        del self._contents[(peer.host, peer.port, key)]
        return False

    def expires(self, peer: Peer, key: str) -> float:
        """When the last penalty that applies to (``peer``, ``key``) ends (0: none)."""
        return max(self._peers.get((peer.host, peer.port), 0.0),
                   self._contents.get((peer.host, peer.port, key), 0.0))

    @property
    def peers(self) -> dict[str, float]:
        """Peers penalised for every key (``host:port``) and the seconds left."""
        now = self._clock()
        return {f"{h}:{p}": t - now for (h, p), t in self._peers.items() if t > now}

    @property
    def contents(self) -> dict[str, float]:
        """(peer, key) penalties (``host:port key``) and the seconds left."""
        now = self._clock()
        return {f"{h}:{p} {k}": t - now for (h, p, k), t in self._contents.items() if t > now}
