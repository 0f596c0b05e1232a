"""The open DHT under hostile datagrams, over real UDP on loopback (issue 20).

An attacker at one loopback address sends 3000 FIND_NODEs, encoded with the project's
codec (bare, or padded as honest nodes send them), each with a made-up sender id. Bars:
the bytes answered are at most 3x the bytes received (no reflection), and the routing
table grows by at most 2 contacts. An attacker that passes the address check (its
address is real: it returns the cookies in ECHOs) still gets at most 2 ids in (the
diversity rule). With a cluster key nothing gets past the MAC check.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from spegel_core.protocols import PeerAddress
from spegel_core.testing.waiting import eventually as until
from spegel_kademlia import KademliaRouter, KademliaSettings
from spegel_kademlia.codec import Codec
from spegel_kademlia.ids import random_id
from spegel_kademlia.messages import Echo, FindNode, Message, Ping, Pong

TARGET_HOST = "127.0.20.1"
HONEST_HOSTS = [f"127.0.21.{n}" for n in range(1, 8)]
ATTACKER_HOST = "127.0.22.1"
PROBE_HOST = "127.0.23.1"
FLOOD = 3000
KEY = b"hostile-test-cluster-key-0123456"


class Seeds:
    name = "static"
    refresh_interval = 60.0

    def __init__(self, *routers: KademliaRouter) -> None:
        self.routers = routers

    async def bootstrap_peers(self) -> list[PeerAddress]:
        return [PeerAddress(*r.bound) for r in self.routers if r.bound]

    async def aclose(self) -> None:
        pass


class Attacker(asyncio.DatagramProtocol):
    """One attacker socket: sends made-up FIND_NODEs, counts what comes back.

    With ``echo`` it also passes address checks: it returns every cookie it is given in
    an ECHO from the id the answer went to.
    """

    def __init__(self, codec: Codec, *, echo: bool = False) -> None:
        self.codec = codec
        self.echo = echo
        self.transport: asyncio.DatagramTransport | None = None
        self.sent_bytes = 0
        self.sent = 0
        self.got_bytes = 0
        self.got = 0
        self.cookies = 0
        self.senders: dict[int, bytes] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.got += 1
        self.got_bytes += len(data)
        message = self.codec.decode(data, addr)
        self.cookies += bool(message.cookie)
        sender = self.senders.pop(message.request_id, None)
        if self.echo and message.cookie and sender is not None:
            self._send(Message(Echo(), message.request_id, sender, 5000,
                               cookie=message.cookie), addr)

    def find_node(self, to: tuple[str, int]) -> None:
        sender = random_id()
        request_id = int.from_bytes(random_id()[:8], "big")
        self.senders[request_id] = sender
        self._send(Message(FindNode(random_id()), request_id, sender, 5000), to)

    def _send(self, message: Message, to: tuple[Any, ...]) -> None:
        assert self.transport is not None
        data = self.codec.encode(message)
        self.transport.sendto(data, to)
        self.sent += 1
        self.sent_bytes += len(data)


class Probe(asyncio.DatagramProtocol):
    """A PING and its PONG through the target, as a barrier: the target answers in
    order, and on loopback a datagram is in its receiver's buffer once sent, so once the
    PONG is here every answer the target sent before it has reached its socket."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.pong: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if isinstance(self.codec.decode(data, addr).body, Pong) and not self.pong.done():
            self.pong.set_result(None)


async def barrier(target: KademliaRouter, key: bytes | None = None) -> None:
    """Wait until the target has answered everything it received before this call,
    and the receivers have read it (a signal, not a pause)."""
    assert target.bound is not None
    loop = asyncio.get_running_loop()
    transport, probe = await loop.create_datagram_endpoint(
        lambda: Probe(Codec(key)), local_addr=(PROBE_HOST, 0))
    try:
        transport.sendto(probe.codec.encode(Message(Ping(), 1, random_id(), 5000)),
                         target.bound)
        await asyncio.wait_for(probe.pong, 10.0)
        for _ in range(3):  # the other sockets' callbacks of the same loop turn
            await asyncio.sleep(0)
    finally:
        transport.close()


def admission(router: KademliaRouter) -> dict[str, Any]:
    return cast(dict[str, Any], router.status().extra["admission"])


def received(router: KademliaRouter) -> int:
    extra = router.status().extra
    return cast(int, extra["datagrams_received"]) + cast(int, extra["datagrams_dropped"])


@pytest.fixture
async def network(request: pytest.FixtureRequest) -> AsyncIterator[list[KademliaRouter]]:
    """The target and 7 honest peers (own addresses), joined. Parameters (a dict):
    ``key`` (use ``KEY``), ``rate`` (answers per second to an unvalidated source)."""
    param = getattr(request, "param", {})
    key = KEY if param.get("key") else None
    settings = KademliaSettings(kademlia_bootstrap_backoff_max=0.3,
                                kademlia_unvalidated_answer_rate=param.get("rate", 50.0))
    target = KademliaRouter(host=TARGET_HOST, port=0, mirror_port=5000, settings=settings,
                            cluster_key=key)
    routers = [target]
    try:
        await target.start()
        for host in HONEST_HOSTS:
            router = KademliaRouter(host=host, port=0, mirror_port=5000, settings=settings,
                                    discovery=[Seeds(target)], cluster_key=key)
            routers.append(router)
            await router.start()
        await until(lambda: len(target.table) == len(HONEST_HOSTS))
        yield routers
    finally:
        for router in routers:
            await router.aclose()


async def flood(target: KademliaRouter, attackers: list[Attacker]) -> None:
    """``FLOOD`` FIND_NODEs spread over ``attackers``, a window at a time so the socket
    buffer never overflows (every datagram reaches the router); then until every answer (and ECHO)
    has been read."""
    assert target.bound is not None
    before = received(target)
    for n in range(FLOOD):
        attackers[n % len(attackers)].find_node(target.bound)
        if n % 25 == 24:  # at most ~100 in flight: the socket buffer never overflows
            await until(lambda n=n: received(target) - before >= n - 100)
    await until(lambda: received(target) - before >= FLOOD)
    await barrier(target)  # the answers have been read, and the ECHOs sent
    await barrier(target)  # the ECHOs have been handled


async def attacker_at(host: str, codec: Codec, **kwargs: Any) -> Attacker:
    loop = asyncio.get_running_loop()
    _, attacker = await loop.create_datagram_endpoint(lambda: Attacker(codec, **kwargs),
                                                      local_addr=(host, 0))
    return attacker


@pytest.mark.parametrize("padded", [False, True], ids=["bare", "padded"])
@pytest.mark.parametrize("network", [{}, {"rate": 0}], indirect=True,
                         ids=["rate-limited", "no-rate-limit"])
async def test_unvalidated_find_nodes_are_not_amplified_nor_trusted(
        network: list[KademliaRouter], padded: bool) -> None:
    target = network[0]
    honest = {contact.node_id for contact in target.table}
    attacker = await attacker_at(ATTACKER_HOST, Codec(pad=padded))
    try:
        await flood(target, [attacker])
        print(f"\n{FLOOD} FIND_NODEs, {attacker.sent_bytes} bytes; answered "
              f"{attacker.got} datagrams, {attacker.got_bytes} bytes "
              f"({attacker.got_bytes / attacker.sent_bytes:.3f}x); "
              f"table {len(target.table)}; {target.status().extra['admission']}")
        assert attacker.sent == FLOOD
        assert attacker.got_bytes <= 3 * attacker.sent_bytes
        assert len(target.table) <= len(HONEST_HOSTS) + 2
        assert honest <= {contact.node_id for contact in target.table}
        assert all(contact.host != ATTACKER_HOST for contact in target.table)
        refused = admission(target)["refused"]
        if target.settings.kademlia_unvalidated_answer_rate:
            assert refused["rate_limited"] > 0  # per-source answer rate
        else:  # every one was looked at: the credit alone kept the bar
            assert "rate_limited" not in refused
    finally:
        assert attacker.transport is not None
        attacker.transport.close()
    # The honest peers still find each other through the target.
    peers = [contact.node_id for contact in network[1].table]
    assert target.node_id in peers


async def test_an_attacker_that_answers_the_check_gets_at_most_two_ids_in(
        network: list[KademliaRouter]) -> None:
    target = network[0]
    before = len(target.table)
    attackers = [await attacker_at(ATTACKER_HOST, Codec(pad=True), echo=True)
                 for _ in range(4)]  # four ports, one address
    try:
        await flood(target, attackers)
        assert admission(target)["echoes_taken"] > len(HONEST_HOSTS)  # its ECHOs were taken
        mine = [c for c in target.table if c.host == ATTACKER_HOST]
        assert len(mine) <= 2
        assert len({c.port for c in mine}) == len(mine)  # one id per ip:port
        assert len(target.table) <= before + 2
        total_sent = sum(a.sent_bytes for a in attackers)
        total_got = sum(a.got_bytes for a in attackers)
        assert total_got <= 3 * total_sent  # its extra ids get answers cut to its credit
        print(f"\nvalidated attacker: sent {total_sent} bytes, got {total_got}; "
              f"{len(mine)} of its ids in the table")
    finally:
        for attacker in attackers:
            assert attacker.transport is not None
            attacker.transport.close()


@pytest.mark.parametrize("network", [{"key": True}], indirect=True, ids=["keyed"])
@pytest.mark.parametrize("attacker_key", [None, b"not-the-cluster-key-000000000000"])
async def test_with_a_cluster_key_nothing_gets_past_the_mac(
        network: list[KademliaRouter], attacker_key: bytes | None) -> None:
    target = network[0]
    assert target.bound is not None
    before = len(target.table)
    dropped_before = cast(int, target.status().extra["datagrams_dropped"])
    attacker = await attacker_at(ATTACKER_HOST, Codec(attacker_key))
    try:
        for n in range(FLOOD):
            attacker.find_node(target.bound)
            if n % 25 == 24:  # at most ~100 in flight: the socket buffer never overflows
                await until(lambda n=n: cast(int, target.status().extra["datagrams_dropped"])
                            - dropped_before >= n - 100)
        await until(lambda: cast(int, target.status().extra["datagrams_dropped"])
                    - dropped_before >= FLOOD)
        assert len(target.table) == before  # every datagram was handled (dropped) above
        await barrier(target, KEY)  # any answer to the flood would have been read by now
        assert attacker.got == 0 and attacker.got_bytes == 0
        reasons = cast(dict[str, int], target.status().extra["dropped_by_reason"])
        assert reasons.get("auth_missing" if attacker_key is None else "mac", 0) >= FLOOD
        assert admission(target) == {"address_validation": False}
    finally:
        assert attacker.transport is not None
        attacker.transport.close()


async def test_honest_joiners_are_validated_by_their_echoes(
        network: list[KademliaRouter]) -> None:
    """Each honest joiner entered the target's table through the cookie it returned:
    one ECHO each, no answer held for a check."""
    target, honest = network[0], network[1:]
    stats = admission(target)
    assert stats["echoes_taken"] >= len(honest)
    assert all(admission(router)["echoes_sent"] >= 1 for router in honest)
    assert {contact.node_id for contact in target.table} == {r.node_id for r in honest}
