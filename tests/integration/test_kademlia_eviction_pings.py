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
from spegel_kademlia.ids import random_id
from spegel_kademlia.messages import (
    AddProvider,
    AddProviderAck,
    Body,
    FindNode,
    Message,
    Nodes,
    Ping,
    Pong,
)

LOOPBACK = "127.0.0.1"
CODEC = Codec()


class FakePeer(asyncio.DatagramProtocol):
    """A node id in the router's farthest bucket that answers what it is asked."""

    def __init__(self, own: bytes) -> None:
        self.node_id = bytes([own[0] ^ 0x80]) + random_id()[1:]
        self.got: list[Body] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        message = CODEC.decode(data, addr)
        self.got.append(message.body)
        reply: Body | None = {Ping: Pong(), FindNode: Nodes(())}.get(type(message.body))
        if reply is not None and not message.is_response:
            self.send(reply, message.request_id, addr)

    def send(self, body: Body, request_id: int, to: tuple[Any, ...]) -> None:
        assert self.transport is not None
        message = Message(body, request_id, self.node_id, 1)
        self.transport.sendto(CODEC.encode(message), to)

    def pings(self) -> int:
        return sum(isinstance(body, Ping) for body in self.got)


@pytest.fixture
async def router() -> AsyncIterator[KademliaRouter]:
    # The peers share 127.0.0.1: no per-IP cap. Each is validated (it answers the
    # router's PING) before it enters the table.
    async with KademliaRouter(host=LOOPBACK, port=0, mirror_port=1,
                              settings=KademliaSettings(kademlia_max_per_ip=0)) as node:
        yield node


async def fill_then_newcomer(router: KademliaRouter) -> list[FakePeer]:
    """20 peers fill the farthest bucket (one at a time, so the first is the head), then a
    21st announces a key; returns the peers, head first."""
    loop = asyncio.get_running_loop()
    assert router.bound is not None
    peers = []
    for n in range(21):
        _, peer = await loop.create_datagram_endpoint(lambda: FakePeer(router.node_id),
                                                      local_addr=(LOOPBACK, 0))
        peers.append(peer)
        # The newcomer announces a key: that is stored only once its address is proven
        # (a PING it answers), and then it is a validated newcomer for the full bucket.
        body: Body = Ping() if n < 20 else AddProvider(random_id(), peer.node_id, 1, 60)
        peer.send(body, n + 1, router.bound)
        for _ in range(400):  # each one in the table (once proven) before the next
            if (peer.node_id in router.table if n < 20
                    else any(isinstance(got, AddProviderAck) for got in peer.got)):
                break
            await asyncio.sleep(0.005)
    await asyncio.sleep(0.3)  # time for an eviction ping to arrive
    return peers


async def test_a_bucket_heard_from_lately_is_not_pinged(router: KademliaRouter) -> None:
    peers = await fill_then_newcomer(router)
    try:
        assert all(Pong() in peer.got for peer in peers[:20])
        assert any(isinstance(body, AddProviderAck) for body in peers[20].got)
        assert len(router.table) == 20 and peers[20].node_id not in router.table
        # Each was pinged once: the address check before it entered the table.
        assert [peer.pings() for peer in peers[:20]] == [1] * 20
    finally:
        for peer in peers:
            assert peer.transport is not None
            peer.transport.close()


async def test_a_silent_head_is_still_pinged(router: KademliaRouter,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_module, "_EVICTION_QUIET", 0.0)
    peers = await fill_then_newcomer(router)
    try:
        # Besides the address checks (1 each), an eviction ping of the head (the least
        # recently seen: the router's own bootstrap lookups reorder them): it answers,
        # it stays, the newcomer waits.
        assert sum(peer.pings() >= 2 for peer in peers[:20]) >= 1
        assert all(peer.node_id in router.table for peer in peers[:20])
        assert peers[20].node_id not in router.table
    finally:
        for peer in peers:
            assert peer.transport is not None
            peer.transport.close()
