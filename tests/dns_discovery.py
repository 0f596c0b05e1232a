"""What the DNS discovery tests share, whatever DNS server answers (dnsmasq or the
in-process one): how a DNSDiscovery is made for a test, and the conformance suite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import pytest

from spegel_core.protocols import PeerAddress
from spegel_core.testing.discovery_conformance import DiscoveryConformance
from spegel_dns import DNSDiscovery, LocalAddresses

NAME = "spegel-bootstrap.spegel.test"


class Server(Protocol):
    """A DNS server of the tests: answers on ``nameserver`` (``IP:PORT``)."""

    @property
    def nameserver(self) -> str: ...


def discovery(server: Server, **kwargs: object) -> DNSDiscovery:
    """A DNSDiscovery of ``NAME`` (or ``domain=``) on ``server``: port 5001, 1 s budget."""
    options: dict[str, object] = {"port": 5001, "nameservers": [server.nameserver],
                                  "timeout": 1.0}
    options.update(kwargs)
    return DNSDiscovery(str(options.pop("domain", NAME)), **options)  # type: ignore[arg-type]


class DnsConformance(DiscoveryConformance):
    """DiscoveryConformance for DNSDiscovery: ``NAME`` lists ``nodes``, the first is this
    node. A subclass sets ``nodes`` and gives the ``dns_server`` and
    ``unreachable_discovery`` fixtures."""

    nodes: list[str]

    @pytest.fixture
    def expected_peers(self) -> set[PeerAddress]:
        return {PeerAddress(ip, 5001) for ip in self.nodes[1:]}

    @pytest.fixture
    def own_peer(self) -> PeerAddress:
        return PeerAddress(self.nodes[0], 5001)

    @pytest.fixture
    async def conformance_discovery(self, dns_server: Server) -> AsyncIterator[DNSDiscovery]:
        source = discovery(dns_server, own=LocalAddresses([self.nodes[0]]))
        yield source
        await source.aclose()
