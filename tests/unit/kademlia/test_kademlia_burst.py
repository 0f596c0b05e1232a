"""A fleet's burst of claims: hop attempts that back off, and a socket read in batches."""

from __future__ import annotations

import asyncio
import socket

import pytest

from spegel_core.protocols import MetricEvent, Peer
from spegel_core.rendezvous import ClaimBook
from spegel_kademlia.burst import BurstProtocol, widen_receive_buffer
from spegel_kademlia.claims import answer_claim, attempts
from spegel_kademlia.codec import Codec
from spegel_kademlia.ids import Contact
from spegel_kademlia.messages import Claim, ClaimReply, Message, Nodes, Ping
from spegel_kademlia.rpc import RpcEndpoint, RpcTimeout

OWN, PEER = b"\x01" * 32, b"\x02" * 32


class Sink:
    def emit(self, event: MetricEvent) -> None:
        pass


@pytest.mark.parametrize(("timeout", "shortest"), [(0.5, 0.15), (1.0, 0.25), (2.5, 0.25),
                                                   (5.0, 0.15), (0.3, 0.15)])
def test_hop_attempts_double_and_fill_the_hop(timeout: float, shortest: float) -> None:
    first, retries = attempts(timeout, shortest)
    waits = [first * 2 ** n for n in range(retries + 1)]
    assert sum(waits) == pytest.approx(timeout)
    assert first >= shortest and (retries == 0 or waits[-1] == 2 * waits[-2])


def test_a_hop_shorter_than_one_attempt_is_one_attempt() -> None:
    assert attempts(0.1, 0.15) == (0.1, 0)
    assert attempts(0.0, 0.15)[1] == 0 and attempts(0.0, 0.15)[0] > 0


class Transport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: object = None, /) -> None:
        self.sent.append(data)

    def close(self) -> None:
        pass


async def test_retries_with_backoff_wait_longer_each_time() -> None:
    rpc = RpcEndpoint(Codec(), OWN, 5000, lambda m: None, Sink())
    transport = Transport()
    rpc.connection_made(transport)
    # Long attempts, expired by hand: the timers never fire during the test.
    future = rpc.start(("127.0.0.1", 6001), Ping(), attempt_timeout=10.0, retries=2,
                       backoff=2.0)
    [request_id] = list(rpc._pending)
    waits = []
    for _ in range(2):
        waits.append(rpc._pending[request_id].attempt_timeout)
        rpc._expire(request_id)
    waits.append(rpc._pending[request_id].attempt_timeout)
    assert waits == [10.0, 20.0, 40.0] and len(transport.sent) == 3
    rpc._expire(request_id)
    with pytest.raises(RpcTimeout):
        await future


def test_a_rendezvous_that_holds_the_flight_does_not_look_for_closer_nodes() -> None:
    book, looked = ClaimBook(), []

    def closer() -> list[Contact]:
        looked.append(1)
        return [Contact(b"c" * 32, "127.0.0.7", 5001)]

    claim = Message(Claim(b"k" * 32, 2, 5000), 1, PEER, 5000, "127.0.0.2", 5001)
    assert isinstance(answer_claim(claim, book, Peer("127.0.0.5", 5000, OWN), now=0,
                                   closer=closer), Nodes)
    assert looked == [1]
    book.claim(b"k" * 32, Peer("127.0.0.3", 5000, b"\x03" * 32), fanout=2, ttl=5, now=0)
    assert isinstance(answer_claim(claim, book, Peer("127.0.0.5", 5000, OWN), now=0,
                                   closer=closer), ClaimReply)
    assert looked == [1]


def test_the_receive_buffer_is_widened_never_shrunk() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        before = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert widen_receive_buffer(sock, 1024) == before
        assert widen_receive_buffer(sock, 4 * before) >= before
    assert widen_receive_buffer(None) == 0


async def test_a_burst_is_read_in_batches_and_every_datagram_arrives() -> None:
    loop = asyncio.get_running_loop()
    seen: list[Message] = []
    count = 40
    all_seen = asyncio.Event()

    def on_message(message: Message) -> None:
        seen.append(message)
        if len(seen) == count:
            all_seen.set()

    rpc = RpcEndpoint(Codec(), OWN, 5000, on_message, Sink())
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: BurstProtocol(rpc, batch=16), local_addr=("127.0.0.1", 0))
    address = transport.get_extra_info("sockname")
    assert protocol.receive_buffer > 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        for n in range(count):  # all sent before the loop reads any
            client.sendto(Codec().encode(Message(Ping(), n, PEER, 5000)), address)
        await asyncio.wait_for(all_seen.wait(), 5.0)
    assert sorted(m.request_id for m in seen) == list(range(count))
    assert protocol.drained > 0  # the loop handed over fewer than it received
    transport.close()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    # The duplicate descriptor closed with the transport: the port is free again.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(address)
