"""Announcing this node's keys: provide, reprovide, re-announce on growth, withdraw.

:class:`Announcing` is a mixin of :class:`~spegel_kademlia.node.KademliaRouter`: the
router supplies the routing table, the RPC endpoint and the lookups; this module holds
the reprovide loop and what it sends (ADD_PROVIDER to the closest nodes).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING

from spegel_kademlia.ids import Contact, key_id
from spegel_kademlia.messages import AddProvider, AddProviderAck, Body, Message
from spegel_kademlia.replicate import GrowthWatch, estimate_size
from spegel_kademlia.rpc import RpcEndpoint, RpcError
from spegel_kademlia.settings import KademliaSettings
from spegel_kademlia.store import AdvertisedKeys
from spegel_kademlia.table import RoutingTable

log = logging.getLogger(__name__)

#: At most this many withdrawal datagrams when the node stops.
WITHDRAW_BUDGET = 4096
#: Keys taken per round of the reprovide loop.
REPROVIDE_BATCH = 256
#: The loops wake at least this often (seconds).
IDLE_WAKE = 60.0


class Announcing:
    """The announcing half of the router (a mixin: the router sets the attributes)."""

    settings: KademliaSettings
    node_id: bytes
    mirror_port: int
    table: RoutingTable
    advertised: AdvertisedKeys
    growth: GrowthWatch | None
    _rpc: RpcEndpoint
    _state: str
    _unstored: set[str]
    _provide_slots: asyncio.Semaphore
    _wake_reprovide: asyncio.Event
    _provided: int
    _provide_failures: int

    if TYPE_CHECKING:
        def _start_request(self, contact: Contact, body: Body, *, retries: int
                           ) -> asyncio.Future[Message]: ...

        async def _find_node(self, target: bytes, *,
                             answered: Sequence[tuple[Contact, Sequence[Contact]]] = ()
                             ) -> list[Contact]: ...

    def network_size(self) -> float:
        """This node's estimate of how many nodes the DHT has (see replicate.py)."""
        k = self.settings.kademlia_k
        return estimate_size(self.node_id, self.table.closest(self.node_id, k),
                             known=len(self.table), k=k)

    async def _wait(self, event: asyncio.Event, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await event.wait()
        except TimeoutError:
            pass

    def _reannounce_if_grown(self) -> None:
        """Make keys announced when the network was ``growth`` times smaller due now.

        The reprovide loop announces them, paced by its cap like any reprovide.
        """
        growth = self.growth
        if growth is None or self._state != "running":
            return
        threshold = growth.next_size()
        known = len(self.table)
        if threshold is None or (known < self.settings.kademlia_k and threshold > known + 1):
            return  # (a table of fewer than k contacts estimates its own size)
        due = growth.due(self.network_size())
        if due:
            for key in due:
                self.advertised.reschedule(key, 0.0)
            self._wake_reprovide.set()

    async def _provide_all(self, keys: list[str]) -> None:
        pending = iter(keys)

        async def worker() -> None:
            for key in pending:
                if key in self.advertised:
                    async with self._provide_slots:
                        await self._provide(key)

        workers = min(len(keys), self.settings.kademlia_reprovide_concurrency)
        await asyncio.gather(*(worker() for _ in range(workers)))

    async def _provide(self, key: str) -> None:
        s = self.settings
        kid = self.advertised.key_id(key)
        closest = await self._find_node(kid) if len(self.table) else []
        body = AddProvider(kid, self.node_id, self.mirror_port, int(s.kademlia_provider_ttl))
        results = await asyncio.gather(
            *(self._start_request(c, body, retries=s.kademlia_rpc_retries) for c in closest),
            return_exceptions=True)
        acks = 0
        for result in results:
            if isinstance(result, Message):
                acks += isinstance(result.body, AddProviderAck) and result.body.accepted
            elif not isinstance(result, RpcError | asyncio.CancelledError):
                log.error("ADD_PROVIDER failed unexpectedly", exc_info=result)
        if acks:
            self._provided += 1
            self._unstored.discard(key)
            if self.growth is not None and key in self.advertised:
                self.growth.announced(key, self.network_size())
            log.debug("provided %s to %d/%d nodes", key, acks, len(closest))
        elif key in self.advertised:
            self._provide_failures += 1
            self._unstored.add(key)
            self.advertised.reschedule(key, s.kademlia_bootstrap_backoff_max)

    def _send_withdrawals(self, keys: Sequence[str]) -> None:
        """Best effort: ADD_PROVIDER ttl 0 to the closest nodes we know, unacknowledged.

        Records elsewhere (in large clusters the routing table does not know every
        holder) simply expire.
        """
        budget = WITHDRAW_BUDGET
        for key in keys:
            kid = key_id(key)
            body = AddProvider(kid, self.node_id, self.mirror_port, 0)
            for contact in self.table.closest(kid):
                if budget <= 0:
                    return
                self._rpc.send(contact.address, body, secrets.randbits(64))
                budget -= 1

    async def _reprovide_loop(self) -> None:
        while True:
            delay = self.advertised.next_due_in()
            wait = IDLE_WAKE if delay is None else min(delay, IDLE_WAKE)
            if wait > 0:
                await self._wait(self._wake_reprovide, wait)
            self._wake_reprovide.clear()
            batch = self.advertised.take_due(REPROVIDE_BATCH)
            if batch:
                try:
                    await self._provide_all(batch)
                except Exception:  # keep reproviding the other keys
                    log.exception("reprovide of %d keys failed", len(batch))
