"""Single flight on the mirror: one upstream fetch per digest for the whole fleet.

On a miss that no provider can serve, :meth:`SingleFlight.fetch` (a blob) or
:meth:`SingleFlight.fetch_manifest` (a manifest by digest) claims the digest at its
rendezvous (:class:`~spegel_core.protocols.SingleFlightRouter`):

- told **go**, the mirror answers 404 at once: its containerd fetches from upstream,
  and its ingest makes this node an arriving provider;
- told to **wait**, it asks its parent in the tree with ``X-Spegel-Wait``: the parent
  holds that request (:meth:`SingleFlight.hold`, woken by the store's events) until
  its own bytes start arriving, then streams them as they land. The stream is
  verified and resumed like any peer stream, and this node's containerd, receiving
  it, makes this node an arriving provider for its own children in turn.

A manifest is served whole: a parent holds a child's request until the manifest is
committed in its store, not merely arriving.

Never worse than without it: no rendezvous, no bytes within ``--single-flight-wait``,
or a dead parent and fetcher all end in a 404 (containerd goes upstream). A request
from the fetcher's own address (a second mirror in its hosts.toml, asked after its
own mirror said 404) is answered 404 at once: the fetcher never waits on itself.

Claims are soft state: renewed every ``ttl / 3`` while this node's ingest grows
(or while a request still waits for it), released when the download is gone.
``docs/fleet.md`` has the design and the comparison with trackers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from spegel_core.errors import BlobUnknown, ManifestUnknown, NotFound, PeerError
from spegel_core.mirror.blob_stream import BlobStream
from spegel_core.mirror.peers import PeerFetcher
from spegel_core.mirror.service import Manifest
from spegel_core.protocols import (
    ArrivingStore,
    ClaimAnswer,
    ContentStore,
    FlightClaim,
    FlightWait,
    MetricsSink,
    Peer,
    SingleFlightRouter,
    StoreEventKind,
)

log = logging.getLogger(__name__)

__all__ = ["ArrivalWatch", "LocalClaim", "SingleFlight"]

#: How often a holding request looks at the store even without an event.
RECHECK = 0.5

T = TypeVar("T")


class ArrivalWatch:
    """Wakes requests waiting for a digest when the store reports it (no polling)."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}

    def notify(self, digest: str) -> None:
        """Wake every request held for ``digest`` (its bytes may have started)."""
        for event in self._waiters.get(digest, ()):
            event.set()

    @contextlib.contextmanager
    def watching(self, digest: str) -> Iterator[asyncio.Event]:
        """An event set when ``digest`` may have bytes; unregistered on exit."""
        event = asyncio.Event()
        self._waiters.setdefault(digest, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(digest)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[digest]

    def __len__(self) -> int:
        return sum(len(w) for w in self._waiters.values())


@dataclass
class LocalClaim:
    """A claim this node made, and what it was told."""

    digest: str
    answer: ClaimAnswer
    started: float
    holding: int = 0
    renewals: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def role(self) -> str:
        """``go`` when this node fetches upstream, else ``wait``."""
        return "go" if self.answer.go else "wait"


class SingleFlight:
    """Claims, waits and holds for one node.

    :param router: the router's single-flight part.
    :param store: this node's content store (arriving content, commits, events).
    :param peers: the peer path (to stream from a parent).
    :param metrics: receives :class:`FlightClaim` and :class:`FlightWait`.
    :param wait: ``--single-flight-wait``: longest wait for a parent's first bytes.
    :param fanout: ``--peer-fanout``: most children per provider.
    """

    def __init__(self, router: SingleFlightRouter, store: ContentStore, peers: PeerFetcher,
                 metrics: MetricsSink, *, wait: float = 5.0, fanout: int = 4,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.router = router
        self.store = store
        self.peers = peers
        self.metrics = metrics
        self.wait = wait
        self.fanout = fanout
        self.ttl = max(3.0, wait)
        self.claim_timeout = min(1.0, wait / 2)
        self.clock = clock
        self.claims: dict[str, LocalClaim] = {}
        self.watch = ArrivalWatch()
        self.counts: dict[str, int] = {"go": 0, "wait": 0, "self": 0, "unreachable": 0,
                                       "bytes": 0, "timeout": 0, "held": 0}

    def __repr__(self) -> str:
        return (f"<SingleFlight claims={len(self.claims)} wait={self.wait}s "
                f"fanout={self.fanout} waiting={len(self.watch)}>")

    # -- the requesting side ---------------------------------------------------------
    async def fetch(self, registry: str, name: str, digest: str, range_header: str | None,
                    client: str) -> BlobStream:
        """A blob no provider had: claim it, then stream from the parent or raise 404.

        Raises :class:`~spegel_core.errors.BlobUnknown` whenever containerd should go
        upstream (told go, its own fetcher asking, nothing within the wait).
        """
        joined = await self._join(digest, client, BlobUnknown, "blob")
        if joined is None:
            # As without single flight: any provider, arriving ones included, else 404.
            return await self.peers.blob(registry, name, digest, range_header)
        return await self._from_tree(
            *joined, BlobUnknown, f"blob {digest}: no bytes",
            lambda peer, left: self.peers.blob_from(peer, registry, name, digest,
                                                    range_header, wait=left),
            lambda: self.peers.blob(registry, name, digest, range_header, arriving=False))

    async def fetch_manifest(self, registry: str, name: str, digest: str,
                             client: str) -> Manifest:
        """A manifest (by digest) no provider had: claim it, then ask the tree for it.

        As for blobs, the first claimant is told go (its containerd fetches it
        upstream) and the others ask their parent or the fetcher, which holds the
        request until the manifest is in its store: a fleet's manifest requests cost
        the upstream one GET per digest (registries such as Docker Hub count those).

        :raises ManifestUnknown: containerd should go upstream (no rendezvous, told
            go, its own fetcher asking, nothing within the wait).
        """
        joined = await self._join(digest, client, ManifestUnknown, "manifest")
        if joined is None:
            raise ManifestUnknown(f"manifest {digest} not found on any peer")
        return await self._from_tree(
            *joined, ManifestUnknown, f"manifest {digest}: nothing",
            lambda peer, left: self.peers.manifest_from(peer, registry, name, digest,
                                                        wait=left),
            lambda: self.peers.manifest(registry, name, digest, digest, digest))

    async def _join(self, digest: str, client: str, unknown: type[NotFound],
                    what: str) -> tuple[ClaimAnswer, LocalClaim] | None:
        """Claim ``digest``: the answer and this node's claim, None with no rendezvous.

        Raises ``unknown`` when containerd should fetch upstream now (told go, or the
        request comes from the fetcher itself).
        """
        started = time.perf_counter()
        answer = await self.router.claim(digest, self.fanout, self.ttl, self.claim_timeout)
        took = time.perf_counter() - started
        if answer is None:
            self._counted(FlightClaim("unreachable", 0, took))
            return None
        known = self.claims.get(digest)
        if not answer.go and client and answer.fetcher.host == client:
            if known is None:
                await self.router.release(digest)  # this node does not join for it
            self._counted(FlightClaim("self", answer.depth, took))
            raise unknown(f"{what} {digest} is being fetched by {client} itself")
        if known is None:
            known = self.claims[digest] = LocalClaim(digest, answer, self.clock())
        else:
            known.answer = answer
        self._counted(FlightClaim(known.role, answer.depth, took))
        if answer.go:
            raise unknown(f"{what} {digest}: this node fetches it upstream (single flight)")
        return answer, known

    async def _from_tree(self, answer: ClaimAnswer, claim: LocalClaim,
                         unknown: type[NotFound], nothing: str,
                         from_peer: Callable[[Peer, float], Awaitable[T]],
                         from_anyone: Callable[[], Awaitable[T]]) -> T:
        """The content from the parent, else the fetcher, else any whole provider.

        Each is asked with the time left of ``--single-flight-wait`` (it holds the
        request until it has the content); ``unknown`` is raised when the wait ends.
        The claim is kept alive (renewed) while the request waits.
        """
        claim.holding += 1
        try:
            return await self._wait_on_tree(answer, claim.digest, unknown, nothing,
                                            from_peer, from_anyone)
        finally:
            claim.holding -= 1

    async def _wait_on_tree(self, answer: ClaimAnswer, digest: str, unknown: type[NotFound],
                            nothing: str, from_peer: Callable[[Peer, float], Awaitable[T]],
                            from_anyone: Callable[[], Awaitable[T]]) -> T:
        started = self.clock()
        deadline = started + self.wait
        candidates: list[Peer] = []
        for peer in (answer.parent, answer.fetcher):
            if peer is not None and peer.host and peer not in candidates:
                candidates.append(peer)
        for peer in candidates:
            left = deadline - self.clock()
            if left <= 0:
                break
            try:
                found = await from_peer(peer, left)
            except PeerError as exc:
                log.info("single flight: %s from %s failed (%s)", digest, peer.url, exc)
                continue
            self._counted(FlightWait("bytes", self.clock() - started))
            log.debug("single flight: %s from %s (depth %d)", digest, peer.url, answer.depth)
            return found
        with contextlib.suppress(NotFound):  # anyone that holds it whole by now
            found = await from_anyone()
            self._counted(FlightWait("bytes", self.clock() - started))
            return found
        self._counted(FlightWait("timeout", self.clock() - started))
        raise unknown(f"{nothing} from the tree within {self.wait:.1f}s; fetch it upstream")

    # -- the serving side ---------------------------------------------------------------
    async def hold(self, digest: str, wait: float, *, whole: bool = False) -> bool:
        """Hold a peer's request for ``digest`` until this node's bytes of it start.

        This node has claimed ``digest`` but has no bytes of it yet: wait (at most
        ``wait`` and ``--single-flight-wait``) for them to start.

        Returns True once the store has the digest arriving (unless ``whole``, as for
        a manifest) or committed, False when this node has no claim of it or the time
        ran out.
        """
        if digest not in self.claims:
            return False
        deadline = self.clock() + min(wait, self.wait)
        with self.watch.watching(digest) as event:
            while True:
                if await self._present(digest, whole):
                    self.counts["held"] += 1
                    return True
                left = deadline - self.clock()
                if left <= 0 or digest not in self.claims:
                    return False
                event.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, RECHECK)):
                        await event.wait()

    async def _present(self, digest: str, whole: bool) -> bool:
        if not whole and isinstance(self.store, ArrivingStore):
            with contextlib.suppress(NotFound):
                content = await self.store.open_arriving(digest)
                await content.aclose()
                return True
        try:
            await self.store.stat(digest)
        except NotFound:
            return False
        return True

    # -- soft state -------------------------------------------------------------------------
    async def run(self) -> None:
        """Follow the store's events (waking held requests) and renew claims."""
        events = self.store.subscribe()

        async def follow() -> None:
            async for event in events:
                if event.kind in (StoreEventKind.CONTENT_ARRIVING,
                                  StoreEventKind.CONTENT_CREATED):
                    self.watch.notify(event.key)

        follower = asyncio.ensure_future(follow())
        try:
            while True:
                await asyncio.sleep(self.ttl / 3)
                try:
                    await self.renew()
                except Exception:  # keep renewing the others next time
                    log.exception("renewing single-flight claims failed")
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await follower
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()

    async def renew(self) -> None:
        """Renew the claims whose download is alive; drop committed and dead ones."""
        arriving: set[str] = set()
        if isinstance(self.store, ArrivingStore):
            arriving = set(await self.store.list_arriving())
        now = self.clock()
        for digest, claim in list(self.claims.items()):
            if digest not in arriving:
                with contextlib.suppress(NotFound):
                    await self.store.stat(digest)
                    del self.claims[digest]  # committed: a provider like any other now
                    continue
            alive = (digest in arriving or claim.holding > 0
                     or now - claim.started < self.wait)
            if not alive:
                log.info("single flight: the download of %s is gone; leaving its flight",
                         digest)
                del self.claims[digest]
                await self.router.release(digest)
                continue
            answer = await self.router.claim(digest, self.fanout, self.ttl, self.claim_timeout)
            if answer is not None and digest in self.claims:
                claim.answer = answer
                claim.renewals += 1

    # -- observing --------------------------------------------------------------------------
    def _counted(self, event: FlightClaim | FlightWait) -> None:
        key = event.role if isinstance(event, FlightClaim) else event.outcome
        self.counts[key] = self.counts.get(key, 0) + 1
        self.metrics.emit(event)

    def snapshot(self) -> dict[str, Any]:
        """Claims of this node and the flights it holds as a rendezvous (debug page)."""
        now = self.clock()
        return {
            "wait_s": self.wait, "fanout": self.fanout, "counts": dict(self.counts),
            "claims": [{"digest": c.digest, "role": c.role, "depth": c.answer.depth,
                        "fetcher": c.answer.fetcher.url,
                        "parent": c.answer.parent.url if c.answer.parent else "",
                        "age_s": round(now - c.started, 1), "renewals": c.renewals,
                        "holding": c.holding}
                       for c in self.claims.values()],
            "rendezvous": self.router.flights(),
        }
