"""A fixed list of bootstrap peers; names in it are resolved at each call."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from spegel_core.hostnames import canonical_host, parse_nameserver
from spegel_core.local_addresses import LocalAddresses
from spegel_core.protocols import DnsQuery, MetricsSink, PeerAddress
from spegel_static.multiaddrs import StaticPeer, parse_static_peer

if TYPE_CHECKING:  # imported when a name needs resolving: a list of IPs needs no aiodns
    import aiodns

log = logging.getLogger(__name__)

__all__ = ["StaticDiscovery"]

_FAMILIES = {"dns4": socket.AF_INET, "dns6": socket.AF_INET6, "dns": socket.AF_UNSPEC}


class StaticDiscovery:
    """A :class:`~spegel_core.protocols.Discovery` of the peers given on the command line.

    ``/ip4`` and ``/ip6`` peers are returned as they are. ``/dns``, ``/dns4`` and
    ``/dns6`` names are resolved (aiodns: ``/etc/hosts``, then DNS) at every call,
    so a peer that moved is found again; a name that does not resolve is logged and
    skipped, never raised. Every address of a name is returned; this node's own
    address is dropped.

    :param peers: parsed :class:`StaticPeer` objects or multiaddr strings.
    :param default_port: port of peers written without ``/udp/PORT``.
    :param own: this node's addresses.
    :param nameservers: DNS servers for names (``IP:PORT``); empty for the system's.
    :param resolve_timeout: longest time the names of one call may take, in seconds.
    :param refresh_interval: seconds between refreshes once the router is healthy.
    :param metrics: receives one :class:`~spegel_core.protocols.DnsQuery` per name
        resolved (``"ok"``, ``"error"`` or ``"timeout"``); IP peers emit nothing.
    """

    name = "static"

    def __init__(self, peers: Iterable[StaticPeer | str], *, default_port: int = 5001,
                 own: LocalAddresses | None = None, nameservers: Sequence[str] = (),
                 resolve_timeout: float = 2.0, refresh_interval: float = 1800.0,
                 metrics: MetricsSink | None = None) -> None:
        self.metrics = metrics
        self.peers = [peer if isinstance(peer, StaticPeer)
                      else parse_static_peer(peer, default_port=default_port) for peer in peers]
        self.own = own if own is not None else LocalAddresses()
        self.nameservers = [parse_nameserver(server) for server in nameservers]
        self.resolve_timeout = resolve_timeout
        self.refresh_interval = refresh_interval
        self._resolvers: set[aiodns.DNSResolver] = set()
        self._closed = False
        self.calls = 0

    async def bootstrap_peers(self) -> list[PeerAddress]:
        """Every listed peer (names resolved now), without this node; never raises."""
        if self._closed:
            return []
        self.calls += 1
        names = [peer for peer in self.peers if peer.is_name]
        found: list[PeerAddress] = []
        resolved: dict[StaticPeer, list[PeerAddress]] = {}
        if names:
            resolved = await self._resolve(names)
        for peer in self.peers:
            found.extend(resolved.get(peer, []) if peer.is_name else [peer.address()])
        return await self.own.drop_own(found)

    async def aclose(self) -> None:
        """Cancel resolutions in flight; later calls return ``[]``. Safe to call twice."""
        self._closed = True
        for resolver in list(self._resolvers):
            await asyncio.shield(resolver.close())

    async def _resolve(self, names: list[StaticPeer]) -> dict[StaticPeer, list[PeerAddress]]:
        import aiodns
        import pycares

        try:
            resolver = aiodns.DNSResolver(nameservers=self.nameservers or None,
                                          timeout=self.resolve_timeout / 2, tries=2)
        except (pycares.AresError, aiodns.error.DNSError, OSError, RuntimeError) as exc:
            log.warning("static bootstrap: cannot create a resolver: %s; names skipped", exc)
            return {}
        self._resolvers.add(resolver)
        started = time.perf_counter()
        try:
            tasks = [asyncio.ensure_future(self._lookup(resolver, peer)) for peer in names]
            done, pending = await asyncio.wait(tasks, timeout=self.resolve_timeout)
            for task in pending:
                task.cancel()
            results: dict[StaticPeer, list[PeerAddress]] = {}
            for peer, task in zip(names, tasks, strict=True):
                if task in done:
                    results[peer] = task.result()
                else:
                    self._emit(started, "timeout")
                    log.warning("static bootstrap: no address for %s within %.3gs; skipped",
                                peer.text or peer, self.resolve_timeout)
            if pending:
                await asyncio.wait(pending)
            return results
        finally:
            self._resolvers.discard(resolver)
            await asyncio.shield(resolver.close())

    async def _lookup(self, resolver: aiodns.DNSResolver, peer: StaticPeer) -> list[PeerAddress]:
        import aiodns

        started = time.perf_counter()
        try:
            result = await resolver.getaddrinfo(peer.host, family=_FAMILIES[peer.protocol],
                                                type=socket.SOCK_DGRAM)
        except (aiodns.error.DNSError, RuntimeError) as exc:  # RuntimeError: closed meanwhile
            if self._closed:
                return []
            self._emit(started, "error")
            reason = exc.args[1] if len(exc.args) > 1 else exc
            log.warning("static bootstrap: cannot resolve %s: %s; skipped",
                        peer.text or peer, reason)
            return []
        self._emit(started, "ok")
        return list(dict.fromkeys(PeerAddress(canonical_host(_text(node.addr[0])), peer.port)
                                  for node in result.nodes))

    def _emit(self, started: float, result: str) -> None:
        if self.metrics is None:
            return
        try:
            self.metrics.emit(DnsQuery(time.perf_counter() - started, result))
        except Exception:  # an observer never breaks bootstrapping
            log.exception("metrics sink %r failed", self.metrics)

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return (f"<StaticDiscovery peers={[str(p) for p in self.peers]} "
                f"calls={self.calls}{state}>")


def _text(address: bytes | str) -> str:
    return address.decode() if isinstance(address, bytes) else address
