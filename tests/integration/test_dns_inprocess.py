"""DNS discovery against an in-process DNS server on loopback (records that change,
truncation, outages, sampling, SRV), and the DiscoveryConformance suite."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from spegel_core.protocols import DnsQuery, PeerAddress
from spegel_core.testing.dns import InProcessDns, free_port
from spegel_core.testing.fakes import RecordingSink
from spegel_core.testing.waiting import eventually as _until
from spegel_dns import DNSDiscovery, LocalAddresses
from spegel_dns.resolver import Outcome, Resolver
from tests.dns_discovery import NAME, DnsConformance, discovery

NODES = [f"127.0.0.{i}" for i in range(2, 12)]


@pytest.fixture
async def dns() -> AsyncIterator[InProcessDns]:
    async with InProcessDns() as server:
        server.set_addresses(NAME, NODES)
        yield server


class TestDNSDiscoveryConformance(DnsConformance):
    nodes = NODES

    @pytest.fixture
    def dns_server(self, dns: InProcessDns) -> InProcessDns:
        return dns

    @pytest.fixture
    async def unreachable_discovery(self) -> AsyncIterator[DNSDiscovery]:
        source = DNSDiscovery(NAME, port=5001, nameservers=[f"127.0.0.1:{free_port()}"],
                              timeout=0.5)
        yield source
        await source.aclose()


async def test_a_and_aaaa_resolved_together(dns: InProcessDns) -> None:
    dns.set_addresses(NAME, ["127.0.0.2", "::1"])
    peers = await discovery(dns).bootstrap_peers()
    assert set(peers) == {PeerAddress("127.0.0.2", 5001), PeerAddress("::1", 5001)}
    assert dns.count(qtype="A") == 1 and dns.count(qtype="AAAA") == 1


async def test_aaaa_only_name(dns: InProcessDns) -> None:
    dns.set_addresses("v6.spegel.test", ["::1", "fd00::2"])
    sink = RecordingSink()
    source = discovery(dns, domain="v6.spegel.test", metrics=sink)
    peers = await source.bootstrap_peers()
    assert set(peers) == {PeerAddress("::1", 5001), PeerAddress("fd00::2", 5001)}
    assert [event.result for event in sink.of_type(DnsQuery)] == ["ok"]


async def test_records_that_change_are_seen_at_once(dns: InProcessDns) -> None:
    source = discovery(dns, sample_size=100)
    assert {p.host for p in await source.bootstrap_peers()} == set(NODES)
    dns.set_addresses(NAME, ["127.0.0.50", "127.0.0.51"])
    assert {p.host for p in await source.bootstrap_peers()} == {"127.0.0.50", "127.0.0.51"}
    dns.remove(NAME)
    assert await source.bootstrap_peers() == []
    assert source.last_outcome == "nxdomain"
    dns.set_addresses(NAME, ["127.0.0.60"])
    assert await source.bootstrap_peers() == [PeerAddress("127.0.0.60", 5001)]


async def test_nxdomain_is_logged_and_counted(dns: InProcessDns,
                                             caplog: pytest.LogCaptureFixture) -> None:
    sink = RecordingSink()
    source = discovery(dns, domain="missing.spegel.test", metrics=sink)
    with caplog.at_level(logging.WARNING, logger="spegel_dns"):
        assert await source.bootstrap_peers() == []
    assert "cannot resolve missing.spegel.test" in caplog.text and "nxdomain" in caplog.text
    [event] = sink.of_type(DnsQuery)
    # Answered, not timed out: the result says so (a duration bound would only
    # measure how busy the machine was).
    assert event.result == "nxdomain" and event.duration_s >= 0


async def test_name_without_addresses_is_ok_but_empty(dns: InProcessDns,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    dns.set_services("srv-only.spegel.test", [("node.spegel.test", 5001)])
    sink = RecordingSink()
    with caplog.at_level(logging.WARNING, logger="spegel_dns"):
        assert await discovery(dns, domain="srv-only.spegel.test",
                               metrics=sink).bootstrap_peers() == []
    assert "has no A or AAAA records" in caplog.text
    assert [event.result for event in sink.of_type(DnsQuery)] == ["ok"]


async def test_hundreds_of_addresses_come_over_tcp(dns: InProcessDns) -> None:
    many = [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(500)]
    dns.set_addresses(NAME, many)
    source = discovery(dns, sample_size=1000)
    peers = await source.bootstrap_peers()
    assert sorted(p.host for p in peers) == sorted(many)
    assert dns.count("tcp", "A") >= 1, "the truncated UDP answer was retried over TCP"
    assert len(await discovery(dns).bootstrap_peers()) == 5


async def test_truncated_answer_without_tcp_is_a_logged_failure(
        caplog: pytest.LogCaptureFixture) -> None:
    async with InProcessDns(tcp=False) as server:
        server.set_addresses(NAME, [f"127.1.0.{i}" for i in range(1, 201)])
        sink = RecordingSink()
        source = discovery(server, metrics=sink)
        with caplog.at_level(logging.WARNING, logger="spegel_dns"):
            assert await source.bootstrap_peers() == []
        assert "cannot resolve" in caplog.text
        assert sink.of_type(DnsQuery)[0].result in ("error", "timeout")


async def test_server_down_at_start_then_up() -> None:
    port = free_port()
    sink = RecordingSink()
    source = DNSDiscovery(NAME, port=5001, nameservers=[f"127.0.0.1:{port}"], timeout=0.5,
                          metrics=sink)
    # Bounded by the 0.5 s timeout (a refused port may answer sooner); never a hang.
    assert await asyncio.wait_for(source.bootstrap_peers(), 5.0) == []
    async with InProcessDns(port=port) as server:
        server.set_addresses(NAME, ["127.0.0.2", "127.0.0.3"])
        assert set(await source.bootstrap_peers()) == {PeerAddress("127.0.0.2", 5001),
                                                       PeerAddress("127.0.0.3", 5001)}
    assert await source.bootstrap_peers() == []  # and down again
    assert [e.result for e in sink.of_type(DnsQuery)][1] == "ok"
    assert sink.of_type(DnsQuery)[0].result != "ok"


async def test_silent_server_times_out_within_the_budget(dns: InProcessDns) -> None:
    dns.mute = True
    sink = RecordingSink()
    source = discovery(dns, timeout=0.3, metrics=sink)
    assert await asyncio.wait_for(source.bootstrap_peers(), 5.0) == []
    [event] = sink.of_type(DnsQuery)
    # It waited for the budget (not less), and gave up (not the resolver's own retries).
    assert event.result == "timeout" and 0.25 < event.duration_s < 5.0
    dns.mute = False
    assert len(await source.bootstrap_peers()) == 5


async def test_own_address_is_never_returned(dns: InProcessDns) -> None:
    source = discovery(dns, sample_size=100, own=LocalAddresses(["127.0.0.5", "::1"]))
    dns.set_addresses(NAME, [*NODES, "::1"])
    for _ in range(5):
        hosts = {p.host for p in await source.bootstrap_peers()}
        assert hosts == set(NODES) - {"127.0.0.5"}


async def test_only_own_address_gives_nothing(dns: InProcessDns,
                                              caplog: pytest.LogCaptureFixture) -> None:
    dns.set_addresses(NAME, ["127.0.0.5"])
    with caplog.at_level(logging.WARNING, logger="spegel_dns"):
        assert await discovery(dns, own=LocalAddresses(["127.0.0.5"])).bootstrap_peers() == []
    assert "no address other than this node's" in caplog.text


async def test_random_sample_not_first_n(dns: InProcessDns) -> None:
    many = [f"127.2.0.{i}" for i in range(1, 41)]
    dns.set_addresses(NAME, many)
    source = discovery(dns, rng=random.Random(7))
    samples = [tuple(await source.bootstrap_peers()) for _ in range(30)]
    assert all(len(sample) == 5 and len(set(sample)) == 5 for sample in samples)
    assert len(set(samples)) > 20, "samples differ from call to call"
    seen = Counter(peer.host for sample in samples for peer in sample)
    assert len(seen) > 30, "the samples cover far more than five addresses"
    first_five = set(sorted(many)[:5])
    assert sum(seen[host] for host in first_five) < 60, "not biased to the first sorted ones"


async def test_srv_ports_with_additional_section(dns: InProcessDns) -> None:
    srv = "_router._udp." + NAME
    dns.set_services(srv, [(f"node-{i}.{NAME}", 6000 + i) for i in range(4)])
    for i in range(4):
        dns.set_addresses(f"node-{i}.{NAME}", [f"127.0.1.{i + 1}"])
    source = discovery(dns, srv_name=srv, own=LocalAddresses(["127.0.1.1"]))
    peers = await source.bootstrap_peers()
    assert set(peers) == {PeerAddress(f"127.0.1.{i + 1}", 6000 + i) for i in range(1, 4)}
    assert dns.count(qtype="SRV") == 1
    assert {name for _, name, q in dns.queries if q == "A"} == {NAME}, "no per-target queries"


async def test_srv_targets_resolved_only_as_needed(dns: InProcessDns) -> None:
    srv = "_router._udp." + NAME
    dns.srv_additional = False
    dns.set_services(srv, [(f"node-{i}.{NAME}", 7000) for i in range(30)])
    for i in range(30):
        dns.set_addresses(f"node-{i}.{NAME}", [f"127.0.2.{i + 1}"])
    peers = await discovery(dns, srv_name=srv, sample_size=3).bootstrap_peers()
    assert len(peers) == 3 and {p.port for p in peers} == {7000}
    targets = {name for _, name, q in dns.queries if q == "A" and name != NAME}
    assert len(targets) == 3, "only the sampled targets are resolved"


async def test_srv_missing_falls_back_to_addresses(dns: InProcessDns,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="spegel_dns"):
        peers = await discovery(dns, srv_name="_router._udp." + NAME).bootstrap_peers()
    assert len(peers) == 5 and {p.port for p in peers} == {5001}
    assert "using A/AAAA records" in caplog.text


async def test_repeated_calls_are_cheap_and_fresh(dns: InProcessDns) -> None:
    source = discovery(dns)
    for _ in range(50):  # cost per call: nox -s scale -- joincost --dns (docs/scale.md)
        assert len(await source.bootstrap_peers()) == 5
    assert dns.count(qtype="A") == 50, "every call asks again (no stale cache)"
    assert source.calls == 50


async def test_aclose_cancels_a_call_in_flight(dns: InProcessDns) -> None:
    dns.mute = True
    source = discovery(dns, timeout=60.0)
    call = asyncio.ensure_future(source.bootstrap_peers())
    await _until(lambda: dns.count() >= 1)  # the question is out: the call is in flight
    await source.aclose()
    # Left alone, the call would wait for its 60 s timeout.
    assert await asyncio.wait_for(call, 20) == []
    assert await source.bootstrap_peers() == []


async def test_failing_metrics_sink_does_not_break_bootstrap(dns: InProcessDns) -> None:
    class Broken:
        def emit(self, event: object) -> None:
            raise RuntimeError("sink bug")

    source = discovery(dns)
    source.metrics = Broken()
    assert len(await source.bootstrap_peers()) == 5


async def test_a_closed_resolver_answers_error_not_raise() -> None:
    resolver = Resolver([f"127.0.0.1:{free_port()}"])
    await resolver.aclose()
    await resolver.aclose()
    answer = await resolver.query(NAME, "A")
    assert answer.outcome is Outcome.ERROR and not answer.answered


async def test_resolver_that_cannot_be_made_is_a_failure(dns: InProcessDns,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> Resolver:
        raise OSError("no file descriptors left")

    monkeypatch.setattr("spegel_dns.discovery.Resolver", broken)
    sink = RecordingSink()
    assert await discovery(dns, metrics=sink).bootstrap_peers() == []
    assert sink.of_type(DnsQuery)[0].result == "error"
