"""Joining the DHT and staying in it: the bootstrap loop, asking seeds, bucket refresh.

:class:`Joining` is a mixin of :class:`~spegel_kademlia.node.KademliaRouter`: the router
supplies the routing table, the RPC endpoint and the lookups; this module holds the
bootstrap loop (with backoff, :class:`~spegel_kademlia.bootstrap.BootstrapSchedule`) and
the maintenance loop (bucket refresh, record expiry).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from spegel_core.protocols import Discovery, PeerAddress
from spegel_kademlia.announcing import IDLE_WAKE
from spegel_kademlia.bootstrap import BootstrapSchedule, bootstrap_addresses, resolve
from spegel_kademlia.ids import Contact, random_id_in_bucket
from spegel_kademlia.messages import Body, FindNode, Message, Nodes, Ping
from spegel_kademlia.rpc import RpcEndpoint, RpcError
from spegel_kademlia.settings import KademliaSettings
from spegel_kademlia.store import AdvertisedKeys, ProviderStore
from spegel_kademlia.table import RoutingTable
from spegel_kademlia.watch import RouterWatch

log = logging.getLogger(__name__)

#: Seconds each discovery source has to name bootstrap addresses.
DISCOVERY_TIMEOUT = 10.0
#: At most this many bootstrap addresses are asked per attempt.
BOOTSTRAP_SAMPLE = 16
#: Re-bootstrap interval when no discovery source names one (seconds).
DEFAULT_REBOOTSTRAP = 30 * 60.0


class Joining:
    """The joining half of the router (a mixin: the router sets the attributes)."""

    settings: KademliaSettings
    node_id: bytes
    table: RoutingTable
    providers: ProviderStore
    advertised: AdvertisedKeys
    _rpc: RpcEndpoint
    _discovery: list[Discovery]
    _rng: random.Random
    _allowed: Callable[[str], bool] | None
    _address: tuple[str, int] | None
    _families: frozenset[int]
    _unstored: set[str]
    _wake_bootstrap: asyncio.Event
    _wake_reprovide: asyncio.Event
    _bootstraps: int
    _joined: bool
    _seeds_were_new: bool
    #: Seconds the bootstrap loop chose to wait after its last attempt (None before
    #: the first attempt ended): the backoff while joining or growing, the
    #: re-bootstrap interval once joined and settled. In :meth:`status` as
    #: ``bootstrap_wait_s``.
    bootstrap_wait: float | None = None
    #: Told of the moments of joining and of every request (:mod:`spegel_kademlia.watch`).
    watch: RouterWatch | None = None

    if TYPE_CHECKING:
        async def _request(self, contact: Contact, body: Body, *, retries: int
                           ) -> Message: ...

        async def _find_node(self, target: bytes, *,
                             answered: Sequence[tuple[Contact, Sequence[Contact]]] = ()
                             ) -> list[Contact]: ...

        async def _wait(self, event: asyncio.Event, seconds: float) -> None: ...

    async def _bootstrap_loop(self) -> None:
        schedule = BootstrapSchedule(
            k=self.settings.kademlia_k, backoff_max=self.settings.kademlia_bootstrap_backoff_max,
            rebootstrap=max(5.0, min((d.refresh_interval for d in self._discovery),
                                     default=DEFAULT_REBOOTSTRAP)),
            uniform=self._rng.uniform)
        while True:
            self._wake_bootstrap.clear()
            try:
                ok = await self._bootstrap_once()
            except Exception:  # a bug in one attempt must not end bootstrapping for good
                log.exception("bootstrap attempt failed")
                ok = False
            wait = schedule.after(ok, len(self.table), self._seeds_were_new)
            self.bootstrap_wait = wait
            if not ok:
                log.info("no DHT peers yet; bootstrapping again in %.1fs", wait)
            await self._wait(self._wake_bootstrap, wait)

    async def _bootstrap_once(self) -> bool:
        self._bootstraps += 1
        was_empty = len(self.table) == 0
        addresses = await bootstrap_addresses(self._discovery,
                                              per_source_timeout=DISCOVERY_TIMEOUT)
        sample = self._rng.sample(addresses, min(len(addresses), BOOTSTRAP_SAMPLE))
        # The seeds are asked for the contacts closest to this node straight away
        # (not pinged first): their answers are the self lookup's first round.
        known = {contact.node_id for contact in self.table}
        if sample and self.watch is not None:
            self.watch.seeds_asked()
        answers = await asyncio.gather(*(self._ask_seed(a) for a in sample))
        self._seeds_were_new = any(
            seed.node_id not in known or any(c.node_id not in known for c in contacts)
            for seed, contacts in filter(None, answers))
        if not len(self.table):
            return False
        if self.watch is not None:
            self.watch.self_lookup(ended=False)
        await self._find_node(self.node_id, answered=[a for a in answers if a is not None])
        if self.watch is not None:
            self.watch.self_lookup(ended=True)
        interval = self.settings.kademlia_refresh_interval
        if not self._joined:
            self._joined = True
            # Ready: the self lookup found the neighbourhood. The other buckets fill
            # from traffic; those it leaves untouched are refreshed, spread over the
            # next refresh interval, by the maintenance loop (RoutingTable.stagger_refresh).
            self.table.stagger_refresh(interval, self._rng.random)
        else:
            await self._refresh(interval)
        if was_empty:
            log.info("joined the DHT: %d contacts", len(self.table))
        if self._unstored:
            # Keys advertised while no node was known: announce them now, not at the
            # next reprovide (the table may have been filled by incoming traffic).
            for key in list(self._unstored):
                self.advertised.reschedule(key, 0.0)
            self._wake_reprovide.set()
        return True

    async def _ask_seed(self, address: PeerAddress
                            ) -> tuple[Contact, tuple[Contact, ...]] | None:
        """Ask a bootstrap peer for the contacts closest to this node.

        A FIND_NODE of the own id: an answer proves the peer alive, like a PING, and
        starts the self lookup.

        Returns the peer's contact and the contacts it gave, None if it did not answer.
        """
        families = self._families
        family = (socket.AF_UNSPEC if len(families) > 1 else
                  socket.AF_INET6 if 6 in families else socket.AF_INET)
        target = await resolve(address, family)
        if target is None:
            return None
        if self._allowed is not None and not self._allowed(target[0]):
            log.debug("bootstrap peer %s is outside --peer-cidrs; not asked", address)
            return None
        try:
            reply = await self._rpc.request(target, FindNode(self.node_id),
                                            attempt_timeout=self.settings.kademlia_rpc_timeout,
                                            retries=self.settings.kademlia_rpc_retries)
        except RpcError:
            log.debug("bootstrap peer %s did not answer", address)
            return None
        contacts = reply.body.contacts if isinstance(reply.body, Nodes) else ()
        return Contact(reply.sender, reply.source_host, reply.source_port), contacts

    async def find_node(self, target: bytes) -> list[Contact]:
        """A FIND_NODE lookup of ``target``, as a bucket refresh does.

        :param target: the 32-byte id looked up.
        :returns: the closest contacts found.
        """
        return await self._find_node(target)

    def reprovide_soon(self) -> None:
        """Wake the reprovide loop now (after keys of :attr:`advertised` were rescheduled)."""
        self._wake_reprovide.set()

    async def ask(self, address: tuple[str, int], body: Body, *,
                  node_id: bytes | None = None, attempt_timeout: float | None = None,
                  retries: int | None = None) -> Message:
        """Send one request to ``address`` and return its answer (diagnostics, tests).

        Nothing is recorded in the routing table beyond what any answer records.

        :param address: ``(ip, port)`` of a DHT node.
        :param body: the request (a FIND_NODE, GET_PROVIDERS, PING, ...).
        :param node_id: the id the answer must come from, if known.
        :param attempt_timeout: seconds per attempt (default ``--kademlia-rpc-timeout``).
        :param retries: attempts after the first (default ``--kademlia-rpc-retries``).
        :returns: the answer.
        :raises RpcError: no answer in time, or the router is closed.
        """
        s = self.settings
        return await self._rpc.request(
            address, body, node_id=node_id,
            attempt_timeout=s.kademlia_rpc_timeout if attempt_timeout is None else attempt_timeout,
            retries=s.kademlia_rpc_retries if retries is None else retries)

    async def ping(self, contact: Contact) -> Message:
        """PING ``contact``, retried ``kademlia_rpc_retries`` times (a liveness check).

        A timeout counts as a failure of the contact in the routing table, as for any
        request this node makes.

        :param contact: the node to ask.
        :returns: its PONG.
        :raises RpcError: no answer (:class:`~spegel_kademlia.rpc.RpcTimeout`) or the
            router is closed.
        """
        return await self._request(contact, Ping(), retries=self.settings.kademlia_rpc_retries)

    async def _refresh(self, interval: float) -> None:
        for index in self.table.stale_buckets(interval):
            await self._find_node(random_id_in_bucket(self.node_id, index))

    async def _maintenance_loop(self) -> None:
        interval = self.settings.kademlia_refresh_interval
        while True:
            await asyncio.sleep(min(IDLE_WAKE, interval / 4))
            self.providers.sweep()
            if len(self.table):
                try:
                    await self._refresh(interval)
                except Exception:  # keep maintaining; the next round may succeed
                    log.exception("bucket refresh failed")
