"""KademliaRouter over real UDP sockets on 127.0.0.1 (ephemeral ports, loopback only)."""

from __future__ import annotations

import asyncio
import socket
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
from spegel_core.testing.waiting import eventually as wait_for
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
                  within: float = 1.0) -> list[Peer]:
    return [peer async for peer in router.lookup(key, count, within)]


async def converges(router: KademliaRouter, key: str) -> list[Peer]:
    """A lookup that must end on its own: it is given a minute, the test 15 s.

    A lookup that ran to its deadline (waiting on a provider that is gone, or on
    silence) fails here, however loaded the machine; one that ends when the
    closest nodes have answered passes.
    """
    async with asyncio.timeout(15):
        return await collect(router, key, within=60.0)


def records(nodes: list[KademliaRouter]) -> int:
    """Provider records held by ``nodes`` (their status)."""
    counts = [node.status().extra["provider_records"] for node in nodes]
    assert all(isinstance(count, int) for count in counts)
    return sum(counts)  # type: ignore[arg-type]


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
        peers = await collect(node, DIGEST)
        if node is provider:
            assert peers == []  # never itself
        else:
            assert peers == [expected], node
    status = cluster[3].status()
    assert status.detail == "ok" and status.peers >= CLUSTER // 2
    assert isinstance(cluster[3], Router)


async def test_closed_provider_lookup_is_fast_and_empty(cluster: list[KademliaRouter]) -> None:
    provider, asker = cluster[11], cluster[12]
    await provider.advertise([DIGEST])
    assert await collect(asker, DIGEST) != []
    live = [node for node in cluster if node is not provider]
    assert records(live) >= 1
    await provider.aclose()  # withdraws its records at the closest nodes it knows
    await wait_for(lambda: records(live) == 0)  # the withdrawals have landed
    for node in cluster[12:16]:
        assert await converges(node, DIGEST) == []
    assert await converges(asker, "sha256:" + "6" * 64) == []  # nobody ever had it


async def test_withdraw_stops_lookups_finding_the_key(cluster: list[KademliaRouter]) -> None:
    provider = cluster[3]
    await provider.advertise([DIGEST])
    await provider.withdraw([DIGEST])
    assert provider.status().advertised_keys == 0
    await wait_for(lambda: records(cluster) == 0)  # the withdrawals have landed
    assert await collect(cluster[4], DIGEST) == []


async def test_start_returns_at_once_and_an_empty_table_answers_fast() -> None:
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind((LOOPBACK, 0))
    address = PeerAddress(*dead.getsockname())
    dead.close()
    router = KademliaRouter(host=LOOPBACK, port=0, mirror_port=5000,
                            discovery=[StaticDiscovery(address)])
    async with router:
        # start() returned before the bootstrap task ran at all (it would wait for
        # the dead seed's timeouts): no attempt has begun yet.
        assert router.status().detail == "bootstrapping"
        assert router.status().extra["bootstrap_attempts"] == 0
        await router.advertise([DIGEST])  # kept, announced once peers appear
        assert router.status().advertised_keys == 1
        assert await converges(router, DIGEST) == []  # nobody to ask: ends at once
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
            await wait_for(lambda: len(recorder.dropped()) >= len(garbage))
            assert sorted(recorder.dropped()) == sorted(
                ["short", "magic", "type", "short", "size"])
            # ... and it keeps answering.
            codec = Codec()
            ping = Message(Ping(), request_id=99, sender=random_id(), mirror_port=1)
            raw.sendto(codec.encode(ping), router.bound)
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(10):
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
            async with asyncio.timeout(10):
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
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(RpcTimeout):
            await router.ping(contact)
        # Two attempts (kademlia_rpc_retries = 1), each waited for to its timeout;
        # how soon after that the loop ran again is the machine's business.
        assert loop.time() - started >= 2 * router.settings.kademlia_rpc_timeout
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
            await wait_for(lambda: len(a.table) == 1 and len(b.table) == 1)
            await b.advertise([DIGEST])
            assert await collect(a, DIGEST) == [Peer(LOOPBACK, b.mirror_port, b.node_id)]
            await wait_for(lambda: "auth_missing" in recorder.dropped())
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
        # The join's self lookup has ended: whatever the join sends has been sent.
        await wait_for(lambda: joiner.status().extra["joined"] is True)
        await wait_for(lambda: len(joiner.table) >= CLUSTER // 2)
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
        # Growth has stopped: the schedule settles on the re-bootstrap interval
        # (discovery's refresh interval, 60 s) instead of asking again soon.
        await wait_for(lambda: early.status().extra["bootstrap_wait_s"]
                       == StaticDiscovery.refresh_interval)
        assert early.status().detail == "ok"
    finally:
        for node in [early, first, *later]:
            await node.aclose()
