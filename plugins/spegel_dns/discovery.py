"""Bootstrap peers from the DNS records of a headless Service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Sequence

import aiodns
import pycares

from spegel_core.hostnames import check_dns_name, parse_nameserver
from spegel_core.local_addresses import LocalAddresses
from spegel_core.protocols import DnsQuery, MetricsSink, PeerAddress
from spegel_dns.resolver import Outcome, QueryAnswer, Resolver

log = logging.getLogger(__name__)

__all__ = ["DNSDiscovery"]


class DNSDiscovery:
    """A :class:`~spegel_core.protocols.Discovery` over A/AAAA (and SRV) records.

    Each :meth:`bootstrap_peers` call asks a fresh resolver for the A and AAAA
    records of ``domain`` concurrently (and for the SRV records of ``srv_name``
    when given), drops this node's own addresses, and returns a random sample of
    ``sample_size`` of the rest: a random sample, so that every node does not
    bootstrap from the same few seeds. Failures (server down, NXDOMAIN, timeout, an
    answer that could not be had even over TCP) are logged and give ``[]``; the
    router asks again with backoff.

    With SRV records, each target's port is used (a headless Service publishes
    ``_<port-name>._<proto>.<service>...`` for named ports); targets are resolved
    from the additional section when the server sends it, else with extra
    questions, only as many as the sample needs. Without SRV records (or when the
    SRV question fails), A/AAAA addresses get ``port``.

    ``metrics`` (the discovery hook's ``metrics`` argument) receives one
    :class:`~spegel_core.protocols.DnsQuery` per call: its duration and ``"ok"``,
    ``"nxdomain"``, ``"timeout"`` or ``"error"``.

    :param domain: the name whose records list the peers.
    :param port: the router port of A/AAAA peers.
    :param nameservers: servers to ask (``IP``, ``IP:PORT``, ``[IPV6]:PORT``); empty
        for the system's.
    :param sample_size: how many peers to return at most.
    :param udp_pool: sample from a plain UDP answer (truncated or not) when it lists at
        least this many peers; only with fewer is the whole answer fetched (over
        TCP when it does not fit a datagram). 0: always the whole answer.
    :param timeout: longest time one call may take, in seconds.
    :param refresh_interval: seconds between refreshes once the router is healthy.
    :param srv_name: an SRV name whose targets and ports are the peers.
    :param own: this node's addresses, dropped from answers.
    :param metrics: where :class:`DnsQuery` events go.
    :param rng: source of randomness for sampling (tests pass a seeded one).
    """

    name = "dns"

    def __init__(self, domain: str, *, port: int, nameservers: Sequence[str] = (),
                 sample_size: int = 5, udp_pool: int = 16, timeout: float = 2.0,
                 refresh_interval: float = 1800.0,
                 srv_name: str | None = None, own: LocalAddresses | None = None,
                 metrics: MetricsSink | None = None, rng: random.Random | None = None) -> None:
        if sample_size < 1:
            raise ValueError("sample_size must be at least 1")
        if udp_pool < 0:
            raise ValueError("udp_pool must not be negative")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.domain = check_dns_name(domain)
        self.srv_name = check_dns_name(srv_name) if srv_name else None
        self.port = port
        self.nameservers = [parse_nameserver(server) for server in nameservers]
        self.sample_size = sample_size
        self.udp_pool = udp_pool
        self.timeout = timeout
        self.refresh_interval = refresh_interval
        self.own = own if own is not None else LocalAddresses()
        self.metrics = metrics
        self._rng = rng or random.Random()
        self._resolvers: set[Resolver] = set()
        self._closed = False
        self.calls = 0
        self.last_outcome: str | None = None

    async def bootstrap_peers(self) -> list[PeerAddress]:
        """A random sample of the peers the records list; ``[]`` on any DNS failure."""
        if self._closed:
            return []
        self.calls += 1
        await self.own.load()  # once; bounded by its own timeout, outside the DNS budget
        started = time.perf_counter()
        peers: list[PeerAddress] = []
        outcome = Outcome.TIMEOUT
        try:
            async with asyncio.timeout(self.timeout):
                found = None
                if self.udp_pool and self.srv_name is None:
                    found = await self._udp_round()
                peers, outcome = found or await self._full_round()
        except TimeoutError:
            log.warning("DNS bootstrap: no answer for %s from %s within %.3gs; will retry",
                        self._target(), self._servers(), self.timeout)
        self._finish(started, outcome)
        if peers:
            log.debug("DNS bootstrap: %d peers from %s: %s", len(peers), self._target(),
                      ", ".join(map(str, peers)))
        return peers

    async def _udp_round(self) -> tuple[list[PeerAddress], Outcome] | None:
        """A sample from one UDP answer per question, truncated or not; None if too few.

        With None, :meth:`_full_round` asks again and reports any failure.

        With thousands of nodes the whole answer does not fit a datagram: the client
        would fetch and parse thousands of records over TCP (~20 ms for 2000 with
        dnsmasq here, and the DNS server would send every node all of them), when a
        node needs a few seeds. The ~29 addresses a 512-byte answer holds are enough to
        sample from when there are ``udp_pool`` (and ``sample_size``) or more; DNS
        servers rotate or shuffle the records of a name (CoreDNS's ``loadbalance``), so
        nodes still spread over many seeds. An answer that fits with room to spare is the whole
        answer. Anything else (few addresses, no records, a timeout, an error) goes
        the whole way.
        """
        resolver = self._new_resolver(udp_only=True)
        if resolver is None:
            return None
        async with self._tracked(resolver):
            addresses, answers = await resolver.addresses(self.domain)
        if self._closed:
            return [], Outcome.ERROR
        if _combine(answers) is not Outcome.OK:
            return None
        candidates = await self.own.drop_own(PeerAddress(ip, self.port) for ip in addresses)
        whole = not any(answer.maybe_truncated for answer in answers)
        if not candidates or (not whole
                              and len(candidates) < max(self.udp_pool, self.sample_size)):
            return None
        return self._sample(candidates), Outcome.OK

    async def _full_round(self) -> tuple[list[PeerAddress], Outcome]:
        """Every record (c-ares asks again over TCP for a truncated answer).

        Failures are logged here.
        """
        resolver = self._new_resolver(udp_only=False)
        if resolver is None:
            return [], Outcome.ERROR
        async with self._tracked(resolver):
            return await self._resolve(resolver)

    def _new_resolver(self, *, udp_only: bool) -> Resolver | None:
        try:
            # Each try gets part of the budget, so a lost datagram is retried within it.
            return Resolver(self.nameservers, timeout=self.timeout / (4 if udp_only else 2),
                            tries=2, udp_only=udp_only)
        except (pycares.AresError, aiodns.error.DNSError, OSError, RuntimeError) as exc:
            if not udp_only:
                log.warning("DNS bootstrap: cannot create a resolver: %s; will retry", exc)
            return None

    @contextlib.asynccontextmanager
    async def _tracked(self, resolver: Resolver) -> AsyncIterator[None]:
        """Keep ``resolver`` where :meth:`aclose` finds it; close it afterwards."""
        self._resolvers.add(resolver)
        try:
            yield
        finally:
            self._resolvers.discard(resolver)
            await asyncio.shield(resolver.aclose())

    async def aclose(self) -> None:
        """Cancel questions in flight; later calls return ``[]``. Safe to call twice."""
        self._closed = True
        for resolver in list(self._resolvers):
            await asyncio.shield(resolver.aclose())

    # -- resolution ------------------------------------------------------------------
    async def _resolve(self, resolver: Resolver) -> tuple[list[PeerAddress], Outcome]:
        srv: QueryAnswer | None = None
        if self.srv_name is None:
            addresses, answers = await resolver.addresses(self.domain)
        else:
            (addresses, answers), srv = await asyncio.gather(
                resolver.addresses(self.domain), resolver.query(self.srv_name, "SRV"))
        if srv is not None and srv.services:
            peers = await self._from_srv(resolver, srv, addresses)
            return peers, Outcome.OK
        if srv is not None and addresses:
            log.warning("DNS bootstrap: SRV %s gave no records (%s); using A/AAAA records of "
                        "%s with port %d", self.srv_name, _why(srv), self.domain, self.port)
        outcome = _combine(answers)
        if outcome is not Outcome.OK and outcome is not Outcome.NODATA:
            log.warning("DNS bootstrap: cannot resolve %s via %s: %s; will retry",
                        self.domain, self._servers(),
                        "; ".join(f"{a.qtype} {_why(a)}" for a in answers))
            return [], outcome
        candidates = await self.own.drop_own(PeerAddress(ip, self.port) for ip in addresses)
        if not addresses:
            log.warning("DNS bootstrap: %s has no A or AAAA records yet; will retry", self.domain)
        elif not candidates:
            log.warning("DNS bootstrap: %s lists no address other than this node's (%d records)",
                        self.domain, len(addresses))
        return self._sample(candidates), outcome

    async def _from_srv(self, resolver: Resolver, srv: QueryAnswer,
                        domain_addresses: list[str]) -> list[PeerAddress]:
        """Peers of SRV targets, resolving no more targets than the sample needs."""
        services = list(dict.fromkeys(srv.services))
        self._rng.shuffle(services)
        peers: dict[PeerAddress, None] = {}
        pending: list[tuple[str, int]] = []
        for target, port in services:
            known = srv.additional.get(target)
            if known is None and target == self.domain:
                known = domain_addresses
            if known is None:
                pending.append((target, port))
                continue
            for peer in await self.own.drop_own(PeerAddress(ip, port) for ip in known):
                peers[peer] = None
        while len(peers) < self.sample_size and pending:
            batch, pending = (pending[: self.sample_size - len(peers)],
                              pending[self.sample_size - len(peers):])
            found = await asyncio.gather(*(resolver.addresses(t) for t, _ in batch))
            for (target, port), (ips, answers) in zip(batch, found, strict=True):
                if not ips:
                    log.warning("DNS bootstrap: SRV target %s has no address (%s)", target,
                                "; ".join(f"{a.qtype} {_why(a)}" for a in answers))
                for peer in await self.own.drop_own(PeerAddress(ip, port) for ip in ips):
                    peers[peer] = None
        return self._sample(list(peers))

    def _sample(self, candidates: list[PeerAddress]) -> list[PeerAddress]:
        return self._rng.sample(candidates, min(self.sample_size, len(candidates)))

    # -- helpers ---------------------------------------------------------------------
    def _finish(self, started: float, outcome: Outcome) -> None:
        result = "ok" if outcome in (Outcome.OK, Outcome.NODATA) else outcome.value
        self.last_outcome = result
        if self.metrics is None:
            return
        try:
            self.metrics.emit(DnsQuery(time.perf_counter() - started, result))
        except Exception:  # an observer never breaks bootstrapping
            log.exception("metrics sink %r failed", self.metrics)

    def _target(self) -> str:
        return self.domain if self.srv_name is None else f"{self.domain} / SRV {self.srv_name}"

    def _servers(self) -> str:
        return ",".join(self.nameservers) or "the system resolver"

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"last={self.last_outcome}"
        return (f"<DNSDiscovery {self._target()} port={self.port} sample={self.sample_size} "
                f"servers={self._servers()} calls={self.calls} {state}>")


def _combine(answers: Sequence[QueryAnswer]) -> Outcome:
    """One outcome for A and AAAA: answered if either was, else the most telling failure."""
    if any(answer.outcome is Outcome.OK for answer in answers):
        return Outcome.OK
    if all(answer.answered for answer in answers):
        return Outcome.NODATA
    outcomes = {answer.outcome for answer in answers}
    if outcomes <= {Outcome.NXDOMAIN, Outcome.NODATA}:
        return Outcome.NXDOMAIN
    return Outcome.TIMEOUT if Outcome.TIMEOUT in outcomes else Outcome.ERROR


def _why(answer: QueryAnswer) -> str:
    detail = f": {answer.detail}" if answer.detail else ""
    return f"{answer.outcome.value}{detail}"
