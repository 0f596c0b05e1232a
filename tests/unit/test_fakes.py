"""The in-memory fakes of the test kit satisfy the core protocols and behave."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from spegel_core.protocols import (
    ContentStore,
    Discovery,
    MetricsSink,
    Peer,
    PeerAddress,
    PeerCount,
    Router,
    StoreEvent,
    StoreEventKind,
)
from spegel_core.store_events import EventHub
from spegel_core.testing.fakes import (
    MemoryContentStore,
    MemoryNetwork,
    MemoryRouter,
    RecordingSink,
    StaticListDiscovery,
)

A = Peer("127.0.0.2", 5000)
B = Peer("127.0.0.3", 5000)
C = Peer("127.0.0.4", 5000)


def test_protocols() -> None:
    network = MemoryNetwork()
    assert isinstance(MemoryContentStore(), ContentStore)
    assert isinstance(MemoryRouter(network, A), Router)
    assert isinstance(StaticListDiscovery(), Discovery)
    assert isinstance(RecordingSink(), MetricsSink)


async def test_routers_find_each_other() -> None:
    network = MemoryNetwork()
    a, b, c = (MemoryRouter(network, peer) for peer in (A, B, C))
    await b.advertise(["sha256:x"])
    await c.advertise(["sha256:x"])
    await a.advertise(["sha256:x"])
    assert [p async for p in a.lookup("sha256:x", 5, 1.0)] == [B, C]
    assert [p async for p in a.lookup("sha256:x", 1, 1.0)] == [B]
    assert [p async for p in b.lookup("sha256:y", 5, 1.0)] == []
    await c.withdraw(["sha256:x"])
    assert [p async for p in a.lookup("sha256:x", 5, 1.0)] == [B]
    await b.aclose()
    assert [p async for p in a.lookup("sha256:x", 5, 1.0)] == []
    assert a.lookups == ["sha256:x"] * 4
    status = a.status()
    assert status.peers == 1 and status.advertised_keys == 1


async def test_network_providers_without_router_and_slow_lookup() -> None:
    network = MemoryNetwork()
    network.add_provider("k", B)
    slow = MemoryRouter(network, A, delay=30.0)
    # The lookup gives up at its 0.05 s timeout; ignoring it would take the 30 s delay.
    found = await asyncio.wait_for(_collect(slow.lookup("k", 3, 0.05)), 10.0)
    assert found == []


async def test_static_discovery() -> None:
    peers = [PeerAddress("127.0.0.2", 5001), PeerAddress("::1", 5001)]
    discovery = StaticListDiscovery(peers, refresh_interval=5)
    assert await discovery.bootstrap_peers() == peers
    assert discovery.calls == 1 and discovery.refresh_interval == 5
    await discovery.aclose()


def test_recording_sink() -> None:
    sink = RecordingSink()
    sink.emit(PeerCount(3))
    assert sink.events == [PeerCount(3)]
    assert sink.of_type(PeerCount) == [PeerCount(3)]
    sink.clear()
    assert sink.events == []


async def test_event_hub_overflow_becomes_resync() -> None:
    hub = EventHub(max_pending=3)
    stream = hub.subscribe()
    for number in range(5):
        hub.publish(StoreEvent(StoreEventKind.CONTENT_CREATED, f"d{number}"))
    hub.close()
    got = [event async for event in stream]
    assert got == [StoreEvent(StoreEventKind.RESYNC),
                   StoreEvent(StoreEventKind.CONTENT_CREATED, "d4")]
    assert hub.subscribers == 0
    assert [event async for event in hub.subscribe()] == []


async def test_event_stream_aclose_unsubscribes() -> None:
    hub = EventHub()
    stream = hub.subscribe()
    assert hub.subscribers == 1
    await stream.aclose()
    assert hub.subscribers == 0
    assert [event async for event in stream] == []


async def _collect(peers: AsyncIterator[Peer]) -> list[Peer]:
    return [peer async for peer in peers]
