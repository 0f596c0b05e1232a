"""The real :class:`KademliaRouter`, with the measurements the simulation needs.

Nothing here changes what the router does; the subclass only watches, through the
router's public watch hook (:mod:`spegel_kademlia.watch`), never its private methods:

- **ready**: the moment the first self-lookup (FIND_NODE of the node's own id) of a
  successful bootstrap finishes, with a non-empty routing table. From then on the
  node knows its closest neighbours, they know it, and both its lookups and its
  answers reach the rest of the DHT. ``joined_at`` is the end of the first self lookup
  whatever the table (the bootstrap attempt returns then: bucket refreshes come later).
- **hops** of a lookup traced with :func:`traced_lookup`: contacts taken from the
  node's own table are hop 1; a contact first learnt from the answer of a hop-``h``
  contact is hop ``h + 1``; the lookup's hop count is the hop of the first answer
  that named a provider (0 when the node held a provider record itself).
- **where ready time goes**: DNS (start to the first seed ping), pings (to the
  start of the self lookup), the self lookup.
- **kill**: close abruptly, like a crashed node: no withdrawals sent.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import random
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, cast

from spegel_core.protocols import Peer
from spegel_kademlia import KademliaRouter
from spegel_kademlia.ids import Contact
from spegel_kademlia.messages import Message, Nodes, Providers


@dataclass(slots=True)
class Trace:
    """What one traced lookup saw: hop of every contact, queries sent, hop of the answer."""

    depth: dict[bytes, int] = field(default_factory=dict)
    queries: int = 0
    #: Requests answered: with ``queries``, the datagrams one operation cost.
    answered: int = 0
    hops: int | None = None


_TRACE: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("scale_trace",
                                                                      default=None)


class SimRouter(KademliaRouter):
    """A :class:`KademliaRouter` that records readiness and traces lookups (its own watch)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.watch = self
        #: Draws of the simulation's own (the router's generator stays its own).
        self.rng = random.Random(f"{self.node_id.hex()}/sim")
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self.joined_at: float | None = None
        #: Where the time to ready went: DNS answered, seeds answered (first bootstrap).
        self.resolved_at: float | None = None
        self.seeds_answered_at: float | None = None
        self.ready = asyncio.Event()
        self.joined = asyncio.Event()
        self.killed = False

    async def start(self) -> None:
        """Start the router, noting the time (monotonic, shared by all processes)."""
        self.started_at = time.monotonic()
        await super().start()

    async def kill(self) -> None:
        """Close like a crashed node: the socket goes away, nobody is told."""
        self.killed = True
        await self.aclose(withdraw=False)

    def reprovide_every(self, interval: float) -> None:
        """Announce every key again within ``interval`` s, and every ``interval`` s after.

        For the overload phase: it changes only the schedule, so the router's own
        pacing (``kademlia_reprovide_concurrency``) decides what actually gets done.
        """
        keys = self.advertised
        keys.interval = interval
        keys.jitter = min(keys.jitter, interval / 10)
        for key in keys:
            keys.reschedule(key, self.rng.uniform(0.0, interval))
        self.reprovide_soon()

    async def probe_find_node(self, target: bytes) -> Trace:
        """One FIND_NODE lookup of ``target``, as a bucket refresh does; what it sent."""
        trace = Trace()
        token = _TRACE.set(trace)
        try:
            await self.find_node(target)
        finally:
            _TRACE.reset(token)
        return trace

    async def probe_provide(self, key: str) -> Trace:
        """Announce ``key`` (a lookup, then ADD_PROVIDER to the closest); what it sent.

        Counted from this node's own requests and their answers, not from every
        node's counters, which also hold the other nodes' own refreshes meanwhile.
        """
        trace = Trace()
        token = _TRACE.set(trace)
        try:
            await self.advertise([key])
        finally:
            _TRACE.reset(token)
        return trace

    # -- the watch (spegel_kademlia.watch.RouterWatch) ------------------------------------
    def seeds_asked(self) -> None:
        """Note when DNS (discovery) first answered."""
        if self.resolved_at is None:
            self.resolved_at = time.monotonic()

    def self_lookup(self, ended: bool) -> None:
        """Note when the seeds answered (the self lookup starts) and when it ended."""
        now = time.monotonic()
        if not ended:
            if self.seeds_answered_at is None:
                self.seeds_answered_at = now
            return
        if self.ready_at is None and len(self.table):
            self.ready_at = now
            self.ready.set()
        if self.joined_at is None:
            self.joined_at = now
            self.joined.set()

    def requested(self, contact: Contact, future: asyncio.Future[Message]) -> None:
        """Count a request of a traced operation, and the hop of what it answers."""
        trace = _TRACE.get()
        if trace is not None:
            trace.queries += 1
            hop = trace.depth.setdefault(contact.node_id, 1)
            future.add_done_callback(functools.partial(_traced, trace, hop))


def _traced(trace: Trace, hop: int, future: asyncio.Future[Message]) -> None:
    """Note an answer in ``trace``: its contacts are one hop further than ``hop``."""
    if future.cancelled() or future.exception() is not None:
        return
    trace.answered += 1
    answer = future.result().body
    if isinstance(answer, Nodes | Providers):
        for known in answer.contacts:
            trace.depth.setdefault(known.node_id, hop + 1)
    if isinstance(answer, Providers) and answer.providers and trace.hops is None:
        trace.hops = hop


@dataclass(frozen=True, slots=True)
class LookupResult:
    """One lookup: whether a wanted provider came, after how long, through how many hops."""

    ok: bool
    seconds: float
    hops: int | None
    queries: int


async def traced_lookup(router: SimRouter, key: str, wanted: frozenset[str], *,
                        count: int = 3, budget: float = 1.0) -> LookupResult:
    """Look ``key`` up as the mirror does (``count`` providers within ``budget`` s).

    Succeeds when a provider whose host is in ``wanted`` is yielded; the time is
    until that provider arrived.
    """
    trace = Trace()
    token = _TRACE.set(trace)
    started = time.perf_counter()  # uvloop's loop.time() has millisecond resolution
    ok = False
    peers = cast(AsyncGenerator[Peer, None], router.lookup(key, count, budget))
    try:
        async for peer in peers:
            if peer.host in wanted:
                ok = True
                break
    finally:
        await peers.aclose()
        _TRACE.reset(token)
    seconds = time.perf_counter() - started
    hops = (trace.hops if trace.hops is not None else 0) if ok else None
    return LookupResult(ok, seconds, hops, trace.queries)
