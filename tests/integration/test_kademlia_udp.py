"""KademliaRouter over real UDP sockets on 127.0.0.1 (ephemeral ports, loopback only)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest

from spegel_core.protocols import (
    DhtMessage,
    DroppedDatagram,
    MetricEvent,
    MetricsSink,
    Peer,
    PeerAddress,
    PeerCount,
    Router,
)
from spegel_kademlia import KademliaRouter, KademliaSettings
from spegel_kademlia.codec import Codec
from spegel_kademlia.ids import Contact, random_id
from spegel_kademlia.messages import Message, Ping, Pong
from spegel_kademlia.rpc import RpcTimeout

LOOPBACK = "127.0.0.1"
DIGEST = "sha256:" + "5" * 64
CLUSTER = 25


class StaticDiscovery:
    name = "static"
    refresh_interval = 60.0

    def __init__(self, *addresses: PeerAddress) -> None:
        self.addresses = list(addresses)

    async def bootstrap_peers(self) -> list[PeerAddress]:
        return list(self.addresses)

    async def aclose(self) -> None:
        pass


class Recorder:
    def __init__(self) -> None:
        self.events: list[MetricEvent] = []

    def emit(self, event: MetricEvent) -> None:
        self.events.append(event)

    def dropped(self) -> list[str]:
        return [e.reason for e in self.events if isinstance(e, DroppedDatagram)]


def make_node(n: int, *seeds: KademliaRouter, cluster_key: bytes | None = None,
              metrics: MetricsSink | None = None) -> KademliaRouter:
    discovery = StaticDiscovery(*(PeerAddress(*s.bound) for s in seeds if s.bound))
    # Every node shares 127.0.0.1 (distinct ports): lift the per-IP diversity cap.
    settings = KademliaSettings(kademlia_max_per_ip=0)
    return KademliaRouter(host=LOOPBACK, port=0, mirror_port=20000 + n, discovery=[discovery],
                          settings=settings, cluster_key=cluster_key, metrics=metrics)


async def collect(router: KademliaRouter, key: str, count: int = 3,
                  within: float = 1.0) -> tuple[list[Peer], float]:
    started = time.perf_counter()
    peers = [peer async for peer in router.lookup(key, count, within)]
    return peers, time.perf_counter() - started


async def wait_for(condition: object, seconds: float = 10.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.fixture
async def cluster() -> AsyncIterator[list[KademliaRouter]]:
    first = make_node(0)
    nodes = [first]
    try:
        await first.start()
        for n in range(1, CLUSTER):
            node = make_node(n, first)
            nodes.append(node)
            await node.start()
        await wait_for(lambda: all(len(node.table) >= CLUSTER // 2 for node in nodes))
        yield nodes
    finally:
        for node in nodes:
            await node.aclose()


async def test_every_node_finds_a_key_advertised_by_one(cluster: list[KademliaRouter]) -> None:
    provider = cluster[7]
    await provider.advertise([DIGEST])
    assert provider.status().advertised_keys == 1
    assert provider.status().extra["provides"] == 1
    expected = Peer(LOOPBACK, provider.mirror_port, provider.node_id)
    for node in cluster:
        peers, elapsed = await collect(node, DIGEST)
        if node is provider:
            assert peers == []  # never itself
        else:
            assert peers == [expected], node
        assert elapsed < 1.0
    status = cluster[3].status()
    assert status.detail == "ok" and status.peers >= CLUSTER // 2
    assert isinstance(cluster[3], Router)


async def test_closed_provider_lookup_is_fast_and_empty(cluster: list[KademliaRouter]) -> None:
    provider, asker = cluster[11], cluster[12]
    await provider.advertise([DIGEST])
    assert (await collect(asker, DIGEST))[0] != []
    await provider.aclose()  # withdraws its records at the closest nodes it knows
    await asyncio.sleep(0.05)
    for node in cluster[12:16]:
        peers, elapsed = await collect(node, DIGEST)
        assert peers == []
        assert elapsed < 0.5, elapsed
    peers, elapsed = await collect(asker, "sha256:" + "6" * 64)  # nobody ever had it
    assert peers == [] and elapsed < 0.5


async def test_withdraw_stops_lookups_finding_the_key(cluster: list[KademliaRouter]) -> None:
    provider = cluster[3]
    await provider.advertise([DIGEST])
    await provider.withdraw([DIGEST])
    await asyncio.sleep(0.05)
    assert provider.status().advertised_keys == 0
    assert (await collect(cluster[4], DIGEST))[0] == []


async def test_start_returns_at_once_and_an_empty_table_answers_fast() -> None:
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind((LOOPBACK, 0))
    address = PeerAddress(*dead.getsockname())
    dead.close()
    router = KademliaRouter(host=LOOPBACK, port=0, mirror_port=5000,
                            discovery=[StaticDiscovery(address)])
    started = time.perf_counter()
    async with router:
        assert time.perf_counter() - started < 0.2
        assert router.status().detail in {"bootstrapping", "no peers"}
        await router.advertise([DIGEST])  # kept, announced once peers appear
        assert router.status().advertised_keys == 1
        peers, elapsed = await collect(router, DIGEST)
        assert peers == [] and elapsed < 0.05
    assert router.status().detail == "closed"
    await router.aclose()  # idempotent


async def test_malformed_datagrams_are_dropped_and_counted() -> None:
    recorder = Recorder()
    router = KademliaRouter(host=LOOPBACK, port=0, mirror_port=5000, metrics=recorder)
    async with router:
        assert router.bound is not None
        garbage = [b"", b"junk" * 20, b"SK\x02\x63" + bytes(43),
                   b"SK\x02\x04\x00" + bytes(42) + b"\x09",
                   bytes(2000)]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.bind((LOOPBACK, 0))
            raw.setblocking(False)
            for data in garbage:
                raw.sendto(data, router.bound)
            await wait_for(lambda: len(recorder.dropped()) >= len(garbage), 2.0)
            assert sorted(recorder.dropped()) == sorted(
                ["short", "magic", "type", "short", "size"])
            # ... and it keeps answering.
            codec = Codec()
            ping = Message(Ping(), request_id=99, sender=random_id(), mirror_port=1)
            raw.sendto(codec.encode(ping), router.bound)
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(2):
                data = await loop.sock_recv(raw, 2048)
            pong = codec.decode(data, router.bound)
            assert isinstance(pong.body, Pong) and pong.request_id == 99
            assert pong.sender == router.node_id and pong.mirror_port == 5000
            # The unknown sender's address is checked (address validation,
            # docs/security.md): the PONG carries a cookie, which this socket never
            # returns, so it never becomes a contact (a second round trip shows that the
            # router has handled everything before it).
            assert len(pong.cookie) == 8
            raw.sendto(codec.encode(Message(Ping(), 100, ping.sender, 1)), router.bound)
            async with asyncio.timeout(2):
                data = await loop.sock_recv(raw, 2048)
            assert codec.decode(data, router.bound).request_id == 100
            assert len(router.table) == 0
    assert any(isinstance(e, DhtMessage) and e == DhtMessage("pong", "sent")
               for e in recorder.events)
    assert PeerCount(1) not in recorder.events


async def test_request_to_a_dead_contact_times_out_fast() -> None:
    recorder = Recorder()
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind((LOOPBACK, 0))
    contact = Contact(random_id(), *dead.getsockname())
    dead.close()
    router = KademliaRouter(host=LOOPBACK, port=0, mirror_port=5000, metrics=recorder)
    async with router:
        router.table.add(contact)
        started = time.perf_counter()
        with pytest.raises(RpcTimeout):
            await router._request(contact, Ping(), retries=1)
        elapsed = time.perf_counter() - started
        assert 0.25 <= elapsed < 0.6  # two attempts of 150 ms
        assert router.table.failures(contact.node_id) >= 1  # (bootstrap may have tried too)
    assert DhtMessage("ping", "timeout") in recorder.events
    assert [e for e in recorder.events if e == DhtMessage("ping", "sent")] == [
        DhtMessage("ping", "sent")] * 2


async def test_cluster_key_separates_clusters() -> None:
    key = b"k" * 32
    recorder = Recorder()
    a = make_node(1, cluster_key=key, metrics=recorder)
    async with a:
        b = make_node(2, a, cluster_key=key)
        stranger = make_node(3, a)
        async with b, stranger:
            await wait_for(lambda: len(a.table) == 1 and len(b.table) == 1, 5.0)
            await b.advertise([DIGEST])
            assert (await collect(a, DIGEST))[0] == [Peer(LOOPBACK, b.mirror_port, b.node_id)]
            await wait_for(lambda: "auth_missing" in recorder.dropped(), 5.0)
            assert len(stranger.table) == 0 and b.node_id in a.table


async def test_joining_costs_one_lookup_not_a_refresh_of_every_bucket(
        cluster: list[KademliaRouter]) -> None:
    # A node joins with the seeds' answers to FIND_NODE(own id) and the rest of that
    # one self lookup: no PING first, and no FIND_NODE per bucket (those are spread
    # over the refresh interval), so a whole cluster joining at once stays cheap.
    recorder = Recorder()
    joiner = KademliaRouter(host=LOOPBACK, port=0, mirror_port=29999,
                            discovery=[StaticDiscovery(*(PeerAddress(*n.bound)
                                                         for n in cluster[:3] if n.bound))],
                            settings=KademliaSettings(kademlia_max_per_ip=0), metrics=recorder)
    try:
        await joiner.start()
        await wait_for(lambda: len(joiner.table) >= CLUSTER // 2)
        await asyncio.sleep(0.5)  # anything else the join would send, sent by now
        sent = [e.type for e in recorder.events
                if isinstance(e, DhtMessage) and e.outcome == "sent"]
        # No PING to the seeds: the only pings are address checks of nodes that asked
        # the joiner something without having answered it first (docs/security.md).
        assert sent[:3] == ["find_node"] * 3, sent
        assert sent.count("ping") <= sent.count("nodes"), sent
        assert 3 <= sent.count("find_node") <= CLUSTER, sent
        interval = joiner.settings.kademlia_refresh_interval
        assert joiner.table.stale_buckets(interval) == []  # refreshes come due later
        assert joiner.table.stale_buckets(0.0)  # but there are buckets to refresh
        # The self lookup reached the joiner's neighbours: they know it now.
        assert sum(joiner.node_id in node.table for node in cluster) >= CLUSTER // 2
    finally:
        await joiner.aclose()


class CountingDiscovery(StaticDiscovery):
    def __init__(self, *addresses: PeerAddress) -> None:
        super().__init__(*addresses)
        self.calls = 0

    async def bootstrap_peers(self) -> list[PeerAddress]:
        self.calls += 1
        return await super().bootstrap_peers()


async def test_small_table_asks_discovery_again_while_it_grows() -> None:
    # A node that joins while the cluster is starting sees one peer. While its table
    # holds fewer than k contacts and keeps growing it asks discovery again (with
    # backoff); once it stops growing it waits for the refresh interval.
    first = make_node(0)
    await first.start()
    assert first.bound is not None
    discovery = CountingDiscovery(PeerAddress(*first.bound))
    early = KademliaRouter(host=LOOPBACK, port=0, mirror_port=20001, discovery=[discovery],
                           settings=KademliaSettings(kademlia_max_per_ip=0))
    later: list[KademliaRouter] = []
    try:
        await early.start()
        await wait_for(lambda: len(early.table) == 1)
        for n in range(2, 14):  # join through `first` only: `early` is not asked
            node = make_node(n, first)
            later.append(node)
            await node.start()
        discovery.addresses = [PeerAddress(*n.bound) for n in [first, *later] if n.bound]
        await wait_for(lambda: discovery.calls >= 2 and len(early.table) >= 12)
        await asyncio.sleep(2.0)  # growth has stopped: at most one more question
        calls = discovery.calls
        await asyncio.sleep(3.0)
        assert discovery.calls == calls
        assert early.status().detail == "ok"
    finally:
        for node in [early, first, *later]:
            await node.aclose()
