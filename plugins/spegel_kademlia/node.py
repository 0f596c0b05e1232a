"""KademliaRouter: the DHT node behind spegel's :class:`~spegel_core.protocols.Router`.

It wires the pure pieces (codec, routing table, lookups, stores) to one UDP socket and
runs three background tasks: bootstrap (with backoff while the table is empty, and while
it holds fewer than k contacts and keeps growing; then a re-bootstrap every discovery
refresh interval), maintenance (bucket refresh, record
expiry) and reprovide (keys due again, paced by a semaphore shared with
:meth:`KademliaRouter.advertise`, so announcing never crowds out lookups, which take no
slot at all). The announcing half lives in :mod:`spegel_kademlia.announcing`, the
joining half (bootstrap, maintenance) in :mod:`spegel_kademlia.joining`.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Sequence
from contextlib import aclosing
from types import TracebackType
from typing import Any, TypeVar

from spegel_core.errors import ConfigError
from spegel_core.protocols import (
    Discovery,
    MetricEvent,
    MetricsSink,
    Peer,
    PeerAddress,
    PeerCount,
    RouterStatus,
)
from spegel_kademlia.admission import Admission
from spegel_kademlia.announcing import Announcing
from spegel_kademlia.burst import BurstProtocol
from spegel_kademlia.claiming import Claiming
from spegel_kademlia.codec import Codec
from spegel_kademlia.gate import RequestGate
from spegel_kademlia.handlers import answer
from spegel_kademlia.ids import Contact, key_id, random_id
from spegel_kademlia.joining import Joining
from spegel_kademlia.lookup import Lookup
from spegel_kademlia.messages import (
    Body,
    Claim,
    FindNode,
    GetProviders,
    Message,
    Ping,
    ProviderInfo,
)
from spegel_kademlia.reach import BOTH, provider_peer, socket_families, start_request, udp_socket
from spegel_kademlia.replicate import GrowthWatch
from spegel_kademlia.rpc import (
    RpcEndpoint,
    RpcError,
    RpcTimeout,
)
from spegel_kademlia.search import drive
from spegel_kademlia.settings import KademliaSettings
from spegel_kademlia.store import AdvertisedKeys, ProviderStore
from spegel_kademlia.table import RoutingTable

log = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_EVICTION_PINGS = 32
#: A full bucket's least recently seen contact heard from this recently is alive (a
#: "good" node, as BEP 5 has it with 15 minutes): it is not pinged for a newcomer. Pinging
#: it on every unknown sender made pings 80 % of all datagrams at 1000 nodes (each ping
#: reaches a node that may not know the pinger and pings in turn); see docs/scale.md. A
#: shorter quiet time would still cycle pings through every full bucket at steady state.
EVICTION_QUIET = 10 * 60.0


def _placeholder_host(host: str) -> str:
    """The bound address if it is a specific one, else a loopback of its family."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "127.0.0.1"
    if ip.is_unspecified or ip.is_multicast:
        return "::1" if ip.version == 6 else "127.0.0.1"
    return str(ip)


class _NullSink:
    def emit(self, event: MetricEvent) -> None:
        pass


class KademliaRouter(Announcing, Joining, Claiming):
    """A Kademlia node: finds providers of keys and announces this node's keys.

    :param host: address to bind the UDP socket to (``0.0.0.0`` for every interface).
    :param port: UDP port (0 picks a free one; see :attr:`address` after start).
    :param mirror_port: port of this node's mirror, announced in provider records.
    :param discovery: sources of bootstrap addresses.
    :param metrics: receives ``DhtMessage``, ``DroppedDatagram`` and ``PeerCount`` events.
    :param settings: tuning; defaults to :class:`KademliaSettings` defaults.
    :param node_id: 32-byte node id (random if None).
    :param cluster_key: HMAC-SHA256 pre-shared key (or several during a rotation: the
        first signs, any is accepted), or None for unauthenticated datagrams.
    :param allowed: whether an address may be a peer (``--peer-cidrs``); None: any.
    """

    name = "kademlia"

    def __init__(
        self,
        *,
        host: str = "0.0.0.0",
        port: int = 5001,
        mirror_port: int,
        discovery: Sequence[Discovery] = (),
        metrics: MetricsSink | None = None,
        settings: KademliaSettings | None = None,
        node_id: bytes | None = None,
        cluster_key: bytes | Sequence[bytes] | None = None,
        allowed: Callable[[str], bool] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = s = settings or KademliaSettings.model_construct()
        self.node_id = node_id or random_id()
        self.mirror_port = mirror_port
        self._host = host
        self._port = port
        self._discovery = list(discovery)
        self._metrics: MetricsSink = metrics or _NullSink()
        self._rng = rng or random.Random()
        self.table = RoutingTable(self.node_id, k=s.kademlia_k,
                                  max_failures=s.kademlia_max_failures,
                                  max_per_ip=s.kademlia_max_per_ip or None)
        self.providers = ProviderStore(ttl=s.kademlia_provider_ttl)
        self.advertised = AdvertisedKeys(interval=s.kademlia_reprovide_interval,
                                         jitter=s.kademlia_reprovide_jitter, rng=self._rng)
        self._allowed = allowed
        self._rpc = RpcEndpoint(Codec(cluster_key), self.node_id, mirror_port,
                                self._on_message, self._metrics, allowed=allowed)
        self._gate = self._make_gate()
        self._state = "new"
        self._address: tuple[str, int] | None = None
        #: IP versions the bound socket reaches (a contact's other addresses are skipped).
        self._families = BOTH
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pinging: set[bytes] = set()
        self._heard: dict[bytes, float] = {}
        self._unstored: set[str] = set()
        self._provide_slots = asyncio.Semaphore(s.kademlia_reprovide_concurrency)
        self._wake_bootstrap = asyncio.Event()
        self._wake_reprovide = asyncio.Event()
        self._last_peer_count = 0
        self._bootstraps = 0
        self._joined = False
        self._seeds_were_new = False
        self._provided = 0
        self._provide_failures = 0
        #: Single flight (:mod:`spegel_kademlia.claiming`).
        self._make_claimant(self._own_host(host))
        # How this node names itself in answers for keys it advertises; the asker
        # replaces the host by the answer's source address (search.named_self).
        self._me = ProviderInfo(self.node_id, _placeholder_host(host), mirror_port)
        growth = s.kademlia_reannounce_growth
        #: Keys due again because the network grew since they were announced.
        self.growth = GrowthWatch(growth) if growth else None

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind the socket and start the background tasks; returns at once."""
        if self._state != "new":
            raise RuntimeError(f"{self!r} can only be started once")
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: BurstProtocol(self._rpc), sock=udp_socket(self._host, self._port))
        except OSError as exc:
            raise ConfigError("--router-addr", f"cannot listen on UDP {self._host or '*'}:"
                                               f"{self._port}: {exc.strerror or exc}") from exc
        sockname = transport.get_extra_info("sockname")
        self._families = socket_families(transport.get_extra_info("socket"))
        self._address = (str(sockname[0]), int(sockname[1]))
        self._state = "running"
        self._spawn(self._bootstrap_loop(), "bootstrap")
        self._spawn(self._maintenance_loop(), "maintenance")
        self._spawn(self._reprovide_loop(), "reprovide")
        log.info("kademlia node %s listening on udp %s", self.node_id.hex()[:12], self.address)
        if not self._rpc.codec.authenticated:
            log.warning("the DHT runs open: no --cluster-key-file, so anyone who can reach udp "
                        "%s can join it and advertise content (see docs/security.md)",
                        self.address)

    async def aclose(self, *, withdraw: bool = True) -> None:
        """Tell the closest nodes our records are gone, stop the tasks, close the socket.

        :param withdraw: False closes like a crashed node (simulations): nobody is told.
        """
        if self._state == "closed":
            return
        if self._state == "running" and withdraw:
            self._send_withdrawals(list(self.advertised))
        self._state = "closed"
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        self._rpc.close()
        if tasks:
            await asyncio.shield(asyncio.gather(*tasks, return_exceptions=True))

    async def __aenter__(self) -> KademliaRouter:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    @property
    def address(self) -> str:
        """``host:port`` the socket is bound to (the requested one before start)."""
        host, port = self._address or (self._host, self._port)
        return str(PeerAddress(host, port))

    @property
    def bound(self) -> tuple[str, int] | None:
        """``(host, port)`` of the bound socket, None before start."""
        return self._address

    # -- Router API -------------------------------------------------------------------------
    async def advertise(self, keys: Sequence[str]) -> None:
        """Announce ``keys`` now and every reprovide interval after.

        Returns once each new key was announced to the ``k`` closest nodes (or found no
        node, in which case it is retried after bootstrap). At most
        ``kademlia_reprovide_concurrency`` keys are worked on at once across all callers
        and the reprovide loop; lookups never wait for that.
        """
        new = self.advertised.add(keys)
        if self._state != "running":
            for key in new:
                self._unstored.add(key)
                self.advertised.reschedule(key, 0.0)
            return
        await self._provide_all(new)

    async def withdraw(self, keys: Sequence[str]) -> None:
        """Stop announcing ``keys``; tell the closest known nodes to drop their records."""
        gone = self.advertised.remove(keys)
        self._unstored.difference_update(gone)
        if self.growth is not None:
            for key in gone:
                self.growth.forget(key)
        if self._state == "running":
            self._send_withdrawals(gone)

    async def lookup(
        self, key: str, count: int, timeout: float  # noqa: ASYNC109 (Router's signature)
    ) -> AsyncIterator[Peer]:
        """Yield up to ``count`` providers of ``key`` (never this node) within ``timeout`` s."""
        if count <= 0 or self._state == "closed":
            return
        deadline = asyncio.get_running_loop().time() + max(0.0, timeout)
        kid = key_id(key)
        seen = {self.node_id}
        for record in self.providers.get(kid):
            if record.node_id not in seen:
                seen.add(record.node_id)
                yield self._peer(record.node_id, record.host, record.port)
                if len(seen) > count:
                    return
        if self._state != "running":
            return
        s = self.settings
        lookup = Lookup(kid, self.table.closest(kid), k=s.kademlia_k, alpha=s.kademlia_alpha,
                        own_id=self.node_id, count=count + 1 - len(seen),
                        ignore_providers=seen)
        self.table.touch_bucket(kid)
        body = GetProviders(kid, min(255, max(count, s.kademlia_lookup_count)))
        try:
            async with aclosing(self._drive(lookup, body, deadline)) as found:
                async for providers in found:
                    for provider in providers:
                        if provider.node_id not in seen:
                            seen.add(provider.node_id)
                            yield self._peer(provider.node_id, provider.host, provider.port,
                                             provider.more)
                            if len(seen) > count:
                                return
        finally:
            if len(seen) <= count:  # too few providers: a claim of the key may follow,
                self._claimant.hint(kid, lookup.result)  # and starts here (claims.py)

    def _peer(self, node_id: bytes, host: str, port: int,
              more: tuple[tuple[str, int], ...] = ()) -> Peer:
        return provider_peer(self.table.get(node_id), self._families,
                             ProviderInfo(node_id, host, port, more))

    @staticmethod
    def _own_host(host: str) -> str:
        return "" if host in ("", "0.0.0.0", "::") else host

    def status(self) -> RouterStatus:
        """Node id, address, routing table size, advertised keys and health.

        ``extra``: counters and state (``bootstrap_attempts`` started, ``joined``: the first
        self lookup has ended, ``bootstrap_wait_s``: :attr:`bootstrap_wait`, ...).
        """
        peers = len(self.table)
        if self._state == "running":
            detail = "ok" if peers else ("bootstrapping" if not self._bootstraps else "no peers")
        else:
            detail = {"new": "not started", "closed": "closed"}[self._state]
        return RouterStatus(
            node_id=self.node_id.hex(), address=self.address, peers=peers,
            advertised_keys=len(self.advertised), detail=detail,
            extra={"provider_records": len(self.providers), "buckets":
                   self.table.nonempty_buckets, "bootstrap_attempts": self._bootstraps,
                   "joined": self._joined, "bootstrap_wait_s": self.bootstrap_wait,
                   "provides": self._provided, "provide_failures": self._provide_failures,
                   "unstored_keys": len(self._unstored),
                   "reannounced_keys": 0 if self.growth is None else self.growth.triggered,
                   "claim_hops": self._claimant.hops,
                   "network_size_estimate": round(self.network_size(), 1),
                   "datagrams_sent": self._rpc.sent,
                   "datagrams_received": self._rpc.received,
                   "datagrams_dropped": self._rpc.dropped, "rpc_timeouts": self._rpc.timeouts,
                   "dropped_by_reason": dict(self._rpc.drop_reasons),
                   "dropped_by_type": dict(self._rpc.dropped_types),
                   "authenticated": self._rpc.codec.authenticated,
                   "admission": self._gate.stats(),
                   "diversity_refused": self.table.refused},
        )

    def __repr__(self) -> str:
        return (f"<KademliaRouter {self.node_id.hex()[:12]} udp={self.address} "
                f"state={self._state} peers={len(self.table)} keys={len(self.advertised)} "
                f"records={len(self.providers)} tasks={len(self._tasks)}>")

    # -- answering ------------------------------------------------------------------------
    def _make_gate(self) -> RequestGate:
        s = self.settings
        mode = s.kademlia_address_validation
        validate = mode == "on" or (mode == "auto" and not self._rpc.codec.authenticated)
        # Requests are padded wherever a receiver may validate (an open DHT, whatever
        # this node's own mode), so that their answers come whole.
        self._rpc.codec.pad = mode == "on" or not self._rpc.codec.authenticated
        admission = Admission(rate=s.kademlia_answer_rate,
                              unvalidated_rate=s.kademlia_unvalidated_answer_rate
                              ) if validate else None
        return RequestGate(
            admission, rpc=self._rpc, admit=self._saw, admits=self.table.admits,
            answer=self._answer, metrics=self._metrics)

    def _answer(self, message: Message) -> Body | None:
        if isinstance(message.body, Claim):
            return self._answer_claim(message, message.body)
        return answer(message, self.table, self.providers, k=self.settings.kademlia_k,
                      rng=self._rng, me=self._me, advertised=self.advertised.ids)

    def _on_message(self, message: Message) -> None:
        self._gate.on_message(message)

    def _saw(self, contact: Contact) -> None:
        now = time.monotonic()
        self._heard[contact.node_id] = now
        if len(self._heard) > 2 * len(self.table) + 1024:
            self._heard = {i: t for i, t in self._heard.items() if i in self.table}
        head = self.table.add(contact)
        heard = None if head is None else self._heard.get(head.node_id)
        if heard is not None and now - heard < EVICTION_QUIET:
            head = None  # the whole bucket was heard from lately: nobody to check
        if (head is not None and head.node_id not in self._pinging
                and len(self._pinging) < _MAX_EVICTION_PINGS and self._state == "running"):
            self._pinging.add(head.node_id)
            self._spawn(self._ping_head(head), "evict-check")
        self._peers_changed()

    async def _ping_head(self, head: Contact) -> None:
        try:
            await self._request(head, Ping(), retries=self.settings.kademlia_rpc_retries)
        except RpcError:
            pass  # counted as a failure; evicted once it has failed often enough
        finally:
            self._pinging.discard(head.node_id)

    def _peers_changed(self) -> None:
        count = len(self.table)
        if count != self._last_peer_count:
            if count > self._last_peer_count:
                self._reannounce_if_grown()
            self._last_peer_count = count
            self._metrics.emit(PeerCount(count))
            if self._state == "running" and (count == 0 or self._unstored):
                # Table emptied: bootstrap again. A first contact arrived while keys
                # wait to be stored: bootstrap now (it announces them) instead of
                # after the backoff.
                self._wake_bootstrap.set()

    # -- asking ---------------------------------------------------------------------------
    def _start_request(self, contact: Contact, body: Body, *, retries: int
                       ) -> asyncio.Future[Message]:
        """Send ``body`` to ``contact``.

        A contact with several addresses is asked at the first one this node reaches,
        then at the next when that times out (:func:`~spegel_kademlia.reach.start_request`).
        A timeout at every address counts as a failure of the contact, whether or not
        anybody still waits for the answer.
        """
        future = start_request(self._rpc, contact, body, families=self._families,
                               attempt_timeout=self.settings.kademlia_rpc_timeout,
                               retries=retries)
        future.add_done_callback(functools.partial(self._request_done, contact.node_id))
        if self.watch is not None:
            self.watch.requested(contact, future)
        return future

    def _request_done(self, node_id: bytes, future: asyncio.Future[Message]) -> None:
        if future.cancelled():
            return
        if isinstance(future.exception(), RpcTimeout):  # (also marks it retrieved)
            self.table.mark_failed(node_id)
            self._peers_changed()

    async def _request(self, contact: Contact, body: Body, *, retries: int) -> Message:
        return await self._start_request(contact, body, retries=retries)

    def _drive(self, lookup: Lookup, body: Body, deadline: float
               ) -> AsyncGenerator[list[ProviderInfo]]:
        # Lookups hedge instead of retrying. A query the lookup no longer needs runs
        # on to its timeout (the driver does not cancel futures it is given), so a
        # dead contact is still counted as failed.
        return drive(lookup, lambda contact: self._start_request(contact, body, retries=0),
                     hedge_after=self.settings.kademlia_hedge_after, deadline=deadline)

    async def _find_node(self, target: bytes, *,
                         answered: Sequence[tuple[Contact, Sequence[Contact]]] = ()
                         ) -> list[Contact]:
        """FIND_NODE lookup of ``target``.

        :param target: the id looked up.
        :param answered: answers already had (contact, the contacts it gave), which
            count as queried.
        :returns: the closest contacts found.
        """
        s = self.settings
        lookup = Lookup(target, self.table.closest(target), k=s.kademlia_k,
                        alpha=s.kademlia_alpha, own_id=self.node_id)
        for contact, contacts in answered:
            lookup.on_response(contact, contacts)
        self.table.touch_bucket(target)
        deadline = asyncio.get_running_loop().time() + max(1.0, 10 * s.kademlia_rpc_timeout)
        async with aclosing(self._drive(lookup, FindNode(target), deadline)) as steps:
            async for _ in steps:
                pass
        return lookup.result

    # -- background tasks -----------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        task = asyncio.create_task(coro, name=f"kademlia-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()  # always retrieved, so never "never retrieved"
        if error is not None and not isinstance(error, RpcError):
            log.error("kademlia task %s failed", task.get_name(), exc_info=error)
