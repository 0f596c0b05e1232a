"""Ping-before-evict over real UDP: a full bucket's oldest contact is pinged for a
newcomer only when it has been silent for a while (docs/scale.md: pinging it on every
unknown sender made PING/PONG 80 % of the datagrams at 1000 nodes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

import spegel_kademlia.node as node_module
from spegel_kademlia import KademliaRouter, KademliaSettings
from spegel_kademlia.codec import Codec
from spegel_kademlia.ids import Contact, key_id, random_id
from spegel_kademlia.messages import (
    Body,
    Echo,
    FindNode,
    GetProviders,
    Message,
    Nodes,
    Ping,
    Pong,
    Providers,
)

LOOPBACK = "127.0.0.1"
CODEC = Codec()


class FakePeer(asyncio.DatagramProtocol):
    """A node id in the router's farthest bucket that answers what it is asked."""

    def __init__(self, own: bytes) -> None:
        self.node_id = bytes([own[0] ^ 0x80]) + random_id()[1:]
        self.got: list[Body] = []
        #: Request ids of the PONGs it received.
        self.ponged: set[int] = set()
        self.pong = asyncio.Event()
        self.transport: asyncio.DatagramTransport | None = None
        #: A contact it names in its answers to GET_PROVIDERS.
        self.introduce: Contact | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        message = CODEC.decode(data, addr)
        self.got.append(message.body)
        if isinstance(message.body, Pong):
            self.ponged.add(message.request_id)
            self.pong.set()
        if message.cookie:  # the router checks our address: return its cookie
            self.send(Echo(), message.request_id, addr, cookie=message.cookie)
        named = (self.introduce,) if self.introduce is not None else ()
        reply: Body | None = {Ping: Pong(), FindNode: Nodes(()),
                              GetProviders: Providers((), named)}.get(type(message.body))
        if reply is not None and not message.is_response:
            self.send(reply, message.request_id, addr)

    def send(self, body: Body, request_id: int, to: tuple[Any, ...], cookie: bytes = b"") -> None:
        assert self.transport is not None
        message = Message(body, request_id, self.node_id, 1, cookie=cookie)
        self.transport.sendto(CODEC.encode(message), to)

    def pings(self) -> int:
        return sum(isinstance(body, Ping) for body in self.got)

    async def round_trip(self, to: tuple[str, int], request_id: int) -> None:
        """PING ``to`` and wait for its PONG (a barrier through the router's loop)."""
        self.send(Ping(), request_id, to)
        async with asyncio.timeout(10):
            while request_id not in self.ponged:
                self.pong.clear()
                await self.pong.wait()


@pytest.fixture
async def router() -> AsyncIterator[KademliaRouter]:
    # The peers share 127.0.0.1: no per-IP cap. Each is validated (it returns the
    # cookie of the router's PONG in an ECHO) before it enters the table.
    async with KademliaRouter(host=LOOPBACK, port=0, mirror_port=1,
                              settings=KademliaSettings(kademlia_max_per_ip=0)) as node:
        yield node


async def fill_then_newcomer(router: KademliaRouter) -> list[FakePeer]:
    """20 peers fill the farthest bucket (one at a time, so the first is the head), then a
    21st is named in their answers to a lookup and answers it; returns the peers, head
    first."""
    loop = asyncio.get_running_loop()
    assert router.bound is not None
    peers = []
    for n in range(21):
        _, peer = await loop.create_datagram_endpoint(lambda: FakePeer(router.node_id),
                                                      local_addr=(LOOPBACK, 0))
        peers.append(peer)
        if n == 20:
            break
        peer.send(Ping(), n + 1, router.bound)
        deadline = loop.time() + 10  # each one in the table (once proven) before the next
        while peer.node_id not in router.table:
            assert loop.time() < deadline, f"peer {n} never entered the table"
            await asyncio.sleep(0.005)
    # The newcomer is learnt by asking: its answer proves its address, so it is a
    # validated newcomer for the full bucket.
    newcomer = peers[20]
    # The newcomer is the closest of the 21 to the key, so the lookup (which asks the
    # k=20 closest it knows) must ask it, whatever the random ids of the others.
    key = "sha256:" + "e" * 64
    kid = key_id(key)
    newcomer.node_id = bytes([(kid[0] & 0x7F) | ((router.node_id[0] ^ 0x80) & 0x80)]) + kid[1:]
    assert newcomer.transport is not None
    port = newcomer.transport.get_extra_info("sockname")[1]
    for peer in peers[:20]:
        peer.introduce = Contact(newcomer.node_id, LOOPBACK, port)
    _ = [p async for p in router.lookup(key, 1, 10.0)]
    assert any(isinstance(body, GetProviders) for body in newcomer.got)
    # A barrier instead of a pause: the newcomer's answer reached the router before
    # this PING (one socket, in order), and an eviction ping is sent in the loop turn
    # after that answer, so it is in the head's socket before the PONG comes back.
    await newcomer.round_trip(router.bound, 10_000)
    return peers


async def test_a_bucket_heard_from_lately_is_not_pinged(router: KademliaRouter) -> None:
    peers = await fill_then_newcomer(router)
    try:
        assert all(Pong() in peer.got for peer in peers[:20])
        assert len(router.table) == 20 and peers[20].node_id not in router.table
        # None was pinged: the address check was the cookie in the router's PONG.
        assert [peer.pings() for peer in peers[:20]] == [0] * 20
    finally:
        for peer in peers:
            assert peer.transport is not None
            peer.transport.close()


async def test_a_silent_head_is_still_pinged(router: KademliaRouter,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_module, "EVICTION_QUIET", 0.0)
    peers = await fill_then_newcomer(router)
    try:
        # An eviction ping of the head (the least recently seen: the router's own
        # bootstrap lookups reorder them): it answers, it stays, the newcomer waits.
        assert sum(peer.pings() >= 1 for peer in peers[:20]) >= 1
        assert all(peer.node_id in router.table for peer in peers[:20])
        assert peers[20].node_id not in router.table
    finally:
        for peer in peers:
            assert peer.transport is not None
            peer.transport.close()
