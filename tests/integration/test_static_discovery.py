"""Static discovery with names resolved by a DNS server on loopback, and its conformance."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from spegel_core.local_addresses import LocalAddresses
from spegel_core.protocols import DnsQuery, PeerAddress
from spegel_core.testing.discovery_conformance import DiscoveryConformance
from spegel_core.testing.dns import DnsServer, InProcessDns, free_port
from spegel_core.testing.fakes import RecordingSink
from spegel_static import StaticDiscovery

PEERS = ["/ip4/127.0.0.2/udp/5001", "/ip6/::1/udp/5002", "/dns4/node-a.spegel.test/udp/5003",
         "/dns6/node-b.spegel.test/udp/5004", "/dns/node-c.spegel.test", "/ip4/127.0.0.9/udp/5001"]


@pytest.fixture
async def dns() -> AsyncIterator[InProcessDns]:
    async with InProcessDns() as server:
        server.set_addresses("node-a.spegel.test", ["127.0.0.3", "::2"])
        server.set_addresses("node-b.spegel.test", ["127.0.0.4", "fd00::4"])
        server.set_addresses("node-c.spegel.test", ["127.0.0.5", "fd00::5"])
        yield server


class TestStaticDiscoveryConformance(DiscoveryConformance):
    @pytest.fixture
    def expected_peers(self) -> set[PeerAddress]:
        return {PeerAddress("127.0.0.2", 5001), PeerAddress("::1", 5002),
                PeerAddress("127.0.0.3", 5003), PeerAddress("fd00::4", 5004),
                PeerAddress("127.0.0.5", 5001), PeerAddress("fd00::5", 5001)}

    @pytest.fixture
    def own_peer(self) -> PeerAddress:
        return PeerAddress("127.0.0.9", 5001)

    @pytest.fixture
    async def conformance_discovery(self, dns: InProcessDns) -> AsyncIterator[StaticDiscovery]:
        source = StaticDiscovery(PEERS, default_port=5001, nameservers=[dns.nameserver],
                                 own=LocalAddresses(["127.0.0.9"], port=5001))
        yield source
        await source.aclose()

    @pytest.fixture
    async def unreachable_discovery(self) -> AsyncIterator[StaticDiscovery]:
        source = StaticDiscovery(["/dns4/node-a.spegel.test/udp/5001"],
                                 nameservers=[f"127.0.0.1:{free_port()}"], resolve_timeout=0.5)
        yield source
        await source.aclose()


async def test_names_resolved_per_family(dns: InProcessDns) -> None:
    source = StaticDiscovery(PEERS, default_port=5001, nameservers=[dns.nameserver])
    assert await source.bootstrap_peers() == [
        PeerAddress("127.0.0.2", 5001), PeerAddress("::1", 5002),
        PeerAddress("127.0.0.3", 5003),                                 # dns4: A only
        PeerAddress("fd00::4", 5004),                                   # dns6: AAAA only
        PeerAddress("127.0.0.5", 5001), PeerAddress("fd00::5", 5001),   # dns: both
        PeerAddress("127.0.0.9", 5001),
    ]


async def test_names_resolved_again_at_each_call(dns: InProcessDns) -> None:
    source = StaticDiscovery(["/dns4/node-a.spegel.test/udp/5001"],
                             nameservers=[dns.nameserver])
    assert await source.bootstrap_peers() == [PeerAddress("127.0.0.3", 5001)]
    dns.set_addresses("node-a.spegel.test", ["127.0.0.30"])
    assert await source.bootstrap_peers() == [PeerAddress("127.0.0.30", 5001)]


async def test_unresolvable_name_is_skipped(dns: InProcessDns,
                                            caplog: pytest.LogCaptureFixture) -> None:
    source = StaticDiscovery(["/dns4/missing.spegel.test/udp/5001", "/ip4/127.0.0.2/udp/5001",
                              "/dns6/node-a.spegel.test/udp/5001"],
                             nameservers=[dns.nameserver])
    with caplog.at_level(logging.WARNING, logger="spegel_static"):
        assert await source.bootstrap_peers() == [PeerAddress("127.0.0.2", 5001),
                                                  PeerAddress("::2", 5001)]
    assert "cannot resolve /dns4/missing.spegel.test/udp/5001" in caplog.text


async def test_silent_server_costs_at_most_the_timeout(dns: InProcessDns,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    dns.mute = True
    source = StaticDiscovery(["/ip4/127.0.0.2/udp/5001", "/dns4/node-a.spegel.test/udp/5001"],
                             nameservers=[dns.nameserver], resolve_timeout=0.3)
    with caplog.at_level(logging.WARNING, logger="spegel_static"):
        # Bounded by resolve_timeout (0.3 s); the failure is waiting for c-ares's own
        # retries (seconds), so the bound is generous for a loaded machine.
        peers = await asyncio.wait_for(source.bootstrap_peers(), 3.0)
    assert peers == [PeerAddress("127.0.0.2", 5001)]
    assert "node-a.spegel.test" in caplog.text


async def test_names_from_dnsmasq(tmp_path: Path) -> None:
    with DnsServer(tmp_path) as server:
        server.set_records("node-a.test", ["127.0.0.3"])
        server.set_records("node-b.test", ["::1"])
        server.reload()
        source = StaticDiscovery(["/dns4/node-a.test/udp/5001", "/dns/node-b.test/udp/5002",
                                  "/dns/gone.test/udp/5003"], nameservers=[server.nameserver])
        assert await source.bootstrap_peers() == [PeerAddress("127.0.0.3", 5001),
                                                  PeerAddress("::1", 5002)]


async def test_each_name_resolved_is_one_dns_query_event(dns: InProcessDns) -> None:
    sink = RecordingSink()
    source = StaticDiscovery(["/ip4/127.0.0.2/udp/5001", "/dns4/node-a.spegel.test/udp/5001",
                              "/dns4/missing.spegel.test/udp/5001"],
                             nameservers=[dns.nameserver], metrics=sink)
    try:
        assert await source.bootstrap_peers() == [PeerAddress("127.0.0.2", 5001),
                                                  PeerAddress("127.0.0.3", 5001)]
    finally:
        await source.aclose()
    results = sorted(event.result for event in sink.of_type(DnsQuery))
    assert results == ["error", "ok"]  # the IP peer needs no query
    assert all(event.duration_s >= 0 for event in sink.of_type(DnsQuery))
