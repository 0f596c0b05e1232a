"""DNS discovery against a real dnsmasq on loopback (Debian ``dnsmasq-base``)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from spegel_core.protocols import DnsQuery, PeerAddress
from spegel_core.testing.dns import DnsServer, SrvRecord, dnsmasq_path
from spegel_core.testing.fakes import RecordingSink
from spegel_dns import DNSDiscovery, LocalAddresses
from spegel_dns.resolver import LOOP_DRIVEN
from tests.dns_discovery import NAME, DnsConformance, discovery

# Not a skip: CI installs Debian dnsmasq-base.
assert dnsmasq_path() is not None, "dnsmasq is required (apt-get install dnsmasq-base)"

SRV = "_router._udp." + NAME
NODES = [f"127.0.0.{i}" for i in range(2, 9)]


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[DnsServer]:
    server = DnsServer(tmp_path, srv=[SrvRecord(SRV, f"node-{i}.{NAME}", 6000 + i)
                                      for i in range(3)])
    server.set_records(NAME, NODES)
    for i in range(3):
        server.set_records(f"node-{i}.{NAME}", [f"127.0.3.{i + 1}"])
    server.set_records("v6.spegel.test", ["::1"])
    with server:
        yield server


class TestDNSDiscoveryOnDnsmasq(DnsConformance):
    nodes = NODES

    @pytest.fixture
    def dns_server(self, dnsmasq: DnsServer) -> DnsServer:
        return dnsmasq

    @pytest.fixture
    async def unreachable_discovery(self, dnsmasq: DnsServer) -> AsyncIterator[DNSDiscovery]:
        dnsmasq.stop()
        source = discovery(dnsmasq, timeout=0.5)
        yield source
        await source.aclose()


async def test_headless_service_answer(dnsmasq: DnsServer) -> None:
    sink = RecordingSink()
    source = discovery(dnsmasq, sample_size=100, metrics=sink)
    assert {p.host for p in await source.bootstrap_peers()} == set(NODES)
    assert sink.of_type(DnsQuery)[0].result == "ok"


async def test_reload_shows_changed_records(dnsmasq: DnsServer) -> None:
    name = "changing.spegel.test"
    dnsmasq.set_records(name, NODES)
    dnsmasq.reload()
    source = discovery(dnsmasq, domain=name, sample_size=100)
    assert len(await source.bootstrap_peers()) == len(NODES)
    dnsmasq.set_records(name, ["127.0.0.40", "127.0.0.41"])
    dnsmasq.reload()
    assert {p.host for p in await source.bootstrap_peers()} == {"127.0.0.40", "127.0.0.41"}
    dnsmasq.remove(name)
    dnsmasq.reload()
    assert await source.bootstrap_peers() == []
    assert source.last_outcome == "nxdomain"


async def test_aaaa_only(dnsmasq: DnsServer) -> None:
    source = discovery(dnsmasq, domain="v6.spegel.test")
    assert await source.bootstrap_peers() == [PeerAddress("::1", 5001)]
    assert source.last_outcome == "ok"


async def test_nxdomain(dnsmasq: DnsServer) -> None:
    sink = RecordingSink()
    assert await discovery(dnsmasq, domain="nope.spegel.test", metrics=sink).bootstrap_peers() == []
    assert sink.of_type(DnsQuery)[0].result == "nxdomain"


async def test_five_hundred_addresses(dnsmasq: DnsServer) -> None:
    many = [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(500)]
    dnsmasq.set_records("many.spegel.test", many)
    dnsmasq.reload()
    peers = await discovery(dnsmasq, domain="many.spegel.test",
                            sample_size=1000).bootstrap_peers()
    assert sorted(p.host for p in peers) == sorted(many)


async def test_big_answer_is_sampled_from_one_udp_datagram(dnsmasq: DnsServer) -> None:
    # 500 addresses do not fit a datagram. With the default udp_pool the part that
    # fits (truncated) is sampled from: one A question, no second one over TCP.
    # With udp_pool=0 the client asks again over TCP for the whole answer.
    many = [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(500)]
    dnsmasq.set_records("many.spegel.test", many)
    dnsmasq.reload()
    question = "query[A] many.spegel.test"
    peers = await discovery(dnsmasq, domain="many.spegel.test").bootstrap_peers()
    assert len(set(peers)) == 5 and {p.host for p in peers} <= set(many)
    assert dnsmasq.log().count(question) == 1
    whole = await discovery(dnsmasq, domain="many.spegel.test", udp_pool=0).bootstrap_peers()
    assert len(set(whole)) == 5 and {p.host for p in whole} <= set(many)
    assert dnsmasq.log().count(question) == 1 + 2


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


async def test_a_resolution_runs_on_the_event_loop_without_a_thread(dnsmasq: DnsServer) -> None:
    # aiodns would start a c-ares event thread per channel, i.e. per resolution.
    assert LOOP_DRIVEN
    await discovery(dnsmasq).bootstrap_peers()  # pycares starts one helper thread, once
    before = _os_threads()
    most = before
    for _ in range(3):
        task = asyncio.ensure_future(discovery(dnsmasq, sample_size=100).bootstrap_peers())
        while not task.done():
            most = max(most, _os_threads())
            await asyncio.sleep(0)
        assert {p.host for p in task.result()} == set(NODES)
    assert most == before


async def test_small_answer_is_asked_once(dnsmasq: DnsServer) -> None:
    # Seven addresses fit a datagram with room to spare: that answer is the whole one.
    source = discovery(dnsmasq, own=LocalAddresses([NODES[0]]))
    assert {p.host for p in await source.bootstrap_peers()} <= set(NODES[1:])
    assert dnsmasq.log().count(f"query[A] {NAME}") == 1


async def test_srv_ports(dnsmasq: DnsServer) -> None:
    source = discovery(dnsmasq, srv_name=SRV, own=LocalAddresses(["127.0.3.1"]))
    assert set(await source.bootstrap_peers()) == {PeerAddress("127.0.3.2", 6001),
                                                   PeerAddress("127.0.3.3", 6002)}


async def test_server_down_then_up(dnsmasq: DnsServer) -> None:
    dnsmasq.stop()
    source = discovery(dnsmasq, timeout=0.5)
    assert await source.bootstrap_peers() == []
    dnsmasq.start()
    assert len(await source.bootstrap_peers()) == 5
