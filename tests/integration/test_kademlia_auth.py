"""Cluster keys and ``--peer-cidrs`` between KademliaRouters over real UDP on loopback.

A node with another key, or none, cannot join a keyed cluster, cannot advertise to it,
and its datagrams are dropped and counted; during a key rotation nodes one step apart
interoperate; a node outside ``--peer-cidrs`` is not a peer at all.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest

from spegel_core.peer_filter import PeerFilter
from spegel_core.protocols import Peer, PeerAddress
from spegel_kademlia import KademliaRouter, KademliaSettings
from spegel_kademlia.codec import Codec
from spegel_kademlia.ids import key_id, random_id
from spegel_kademlia.messages import AddProvider, Message

K1 = b"the-first-cluster-key-0123456789"
K2 = b"the-second-cluster-key-012345678"
DIGEST = "sha256:" + "7" * 64
Keys = bytes | Sequence[bytes] | None
Start = Callable[..., Awaitable[KademliaRouter]]


class Seeds:
    name = "static"
    refresh_interval = 60.0

    def __init__(self, routers: Sequence[KademliaRouter]) -> None:
        self.routers = routers

    async def bootstrap_peers(self) -> list[PeerAddress]:
        return [PeerAddress(*r.bound) for r in self.routers if r.bound]

    async def aclose(self) -> None:
        pass


async def until(condition: Callable[[], bool], seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def providers(router: KademliaRouter, key: str = DIGEST) -> list[Peer]:
    return [peer async for peer in router.lookup(key, 3, 0.5)]


def dropped(router: KademliaRouter, by: str = "reason") -> dict[str, int]:
    """The router's dropped-datagram counters (its status), by reason or message type."""
    counts = router.status().extra[f"dropped_by_{by}"]
    assert isinstance(counts, dict)
    return counts


def attempts(router: KademliaRouter) -> int:
    """Bootstrap attempts the router has started (an attempt ends before the next starts)."""
    count = router.status().extra["bootstrap_attempts"]
    assert isinstance(count, int)
    return count


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    routers: list[KademliaRouter] = []

    async def make(keys: Keys, *seeds: KademliaRouter, host: str = "127.0.0.1",
                   allowed: PeerFilter | None = None) -> KademliaRouter:
        settings = KademliaSettings(kademlia_bootstrap_backoff_max=0.3)
        router = KademliaRouter(host=host, port=0, mirror_port=20000 + len(routers),
                                discovery=[Seeds(seeds)], settings=settings, cluster_key=keys,
                                allowed=allowed.allows if allowed else None)
        routers.append(router)
        await router.start()
        return router

    yield make
    for router in routers:
        await router.aclose()


async def test_other_key_or_no_key_cannot_join_nor_advertise(start: Start) -> None:
    a = await start(K1)
    b = await start(K1, a)
    assert await until(lambda: len(a.table) == 1 and len(b.table) == 1)
    intruders = [await start(K2, a, b), await start(None, a, b)]
    for intruder in intruders:
        await intruder.advertise([DIGEST])
    # Each intruder has asked the seeds twice (its third attempt has begun) and the
    # keyed node has dropped both kinds: had an answer been accepted, it would be in.
    assert await until(lambda: all(attempts(i) >= 3 for i in intruders))
    assert await until(lambda: dropped(a).get("mac", 0) >= 1
                       and dropped(a).get("auth_missing", 0) >= 1)
    for intruder in intruders:
        assert len(intruder.table) == 0 and intruder.status().detail in {"bootstrapping",
                                                                          "no peers"}
    assert len(a.table) == 1 and len(b.table) == 1  # never a contact of a keyed node
    # An ADD_PROVIDER sent straight at a keyed node is dropped and counted as one.
    assert a.bound is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.bind(("127.0.0.1", 0))
        for codec in (Codec(K2), Codec()):
            body = AddProvider(key_id(DIGEST), sender := random_id(), 5000, 600)
            raw.sendto(codec.encode(Message(body, 1, sender, 5000)), a.bound)
    assert await until(lambda: dropped(a, "type").get("add_provider") == 2)
    assert len(a.providers) == 0 and len(b.providers) == 0
    assert await providers(a) == [] and await providers(b) == []
    extra = a.status().extra
    assert extra["authenticated"] is True
    assert extra["dropped_by_type"]["add_provider"] == 2  # type: ignore[index]
    # The keyed nodes still work among themselves.
    await b.advertise([DIGEST])
    assert await providers(a) == [Peer("127.0.0.1", b.mirror_port, b.node_id)]


@pytest.mark.parametrize(("first", "second", "works"), [
    ([K1], [K1, K2], True),   # roll 1: the new key is accepted everywhere
    ([K1, K2], [K2, K1], True),  # roll 2: the new key signs
    ([K2, K1], [K2], True),   # roll 3: the old key is dropped
    ([K1], [K2, K1], False),  # roll 2 before roll 1 finished: the old node cannot hear it
    ([K1, K2], [K2], False),  # roll 3 before roll 2 finished
])
async def test_key_rotation_steps(start: Start, first: list[bytes],
                                  second: list[bytes], works: bool) -> None:
    old = await start(first)
    new = await start(second, old)
    if works:
        assert await until(lambda: len(old.table) == 1 and len(new.table) == 1)
        await old.advertise([DIGEST])
        await new.advertise(["sha256:" + "8" * 64])
        assert [p.node_id for p in await providers(new)] == [old.node_id]
        assert [p.node_id for p in await providers(old, "sha256:" + "8" * 64)] == [new.node_id]
    else:
        # Two attempts ended (the third has begun), each answer dropped by one side.
        assert await until(lambda: attempts(new) >= 3)
        assert await until(lambda: sum(dropped(new).values()) + sum(dropped(old).values()) >= 2)
        assert len(new.table) == 0  # the answers it gets are dropped
        await old.advertise([DIGEST])
        assert await providers(new) == []


async def test_peers_outside_the_cidrs_are_ignored(start: Start) -> None:
    inside = PeerFilter(["127.0.0.1/32"])
    a = await start(None, allowed=inside)
    b = await start(None, a, allowed=inside)
    outsider = await start(None, a, b, host="127.0.0.2")
    assert await until(lambda: len(a.table) == 1 and len(b.table) == 1)
    await outsider.advertise([DIGEST])
    assert await until(lambda: attempts(outsider) >= 3)  # two attempts ended unanswered
    assert await until(lambda: dropped(a).get("peer_cidrs", 0) >= 1)
    assert len(outsider.table) == 0
    assert await providers(a) == [] and len(a.providers) == 0
    # Nor is an outsider believed when a trusted node names it as a contact.
    assert [c.host for c in b.table.closest(random_id())] == ["127.0.0.1"]
