"""RpcEndpoint with an in-memory transport: matching, retries, timeouts, drops."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from spegel_core.protocols import DhtMessage, DroppedDatagram, MetricEvent
from spegel_kademlia.codec import Codec
from spegel_kademlia.messages import Message, Ping, Pong
from spegel_kademlia.rpc import RpcClosed, RpcEndpoint, RpcTimeout

OWN = b"\x01" * 32
PEER = b"\x02" * 32
ADDR = ("127.0.0.1", 6001)


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []
        self.closed = False
        #: Called with each datagram sent (after it is recorded).
        self.on_send: Callable[[bytes], None] | None = None

    def sendto(self, data: bytes, addr: Any = None, /) -> None:
        self.sent.append((data, addr))
        if self.on_send is not None:
            self.on_send(data)

    def close(self) -> None:
        self.closed = True


class Events:
    def __init__(self) -> None:
        self.events: list[MetricEvent] = []

    def emit(self, event: MetricEvent) -> None:
        self.events.append(event)


def endpoint() -> tuple[RpcEndpoint, FakeTransport, Events, list[Message]]:
    seen: list[Message] = []
    events = Events()
    rpc = RpcEndpoint(Codec(), OWN, 5000, seen.append, events)
    transport = FakeTransport()
    rpc.connection_made(transport)
    return rpc, transport, events, seen


def reply_to(data: bytes, *, sender: bytes = PEER) -> bytes:
    request = Codec().decode(data, ADDR)
    return Codec().encode(Message(Pong(), request.request_id, sender, 5000))


async def test_response_is_matched_by_id_address_and_node_id() -> None:
    rpc, transport, events, seen = endpoint()
    task = asyncio.create_task(rpc.request(ADDR, Ping(), attempt_timeout=1, node_id=PEER))
    await asyncio.sleep(0)
    [(data, addr)] = transport.sent
    assert addr == ADDR
    rpc.datagram_received(reply_to(data), ("127.0.0.1", 6002))  # wrong port
    rpc.datagram_received(reply_to(data, sender=b"\x03" * 32), ADDR)  # wrong node
    assert not task.done()
    rpc.datagram_received(reply_to(data), ("::ffff:127.0.0.1", 6001, 0, 0))
    response = await task
    assert isinstance(response.body, Pong) and seen == [response]
    assert [e for e in events.events if isinstance(e, DroppedDatagram)] == [
        DroppedDatagram("unexpected_response")] * 2
    rpc.datagram_received(reply_to(data), ADDR)  # a duplicate answer
    assert events.events[-1] == DroppedDatagram("unexpected_response")
    assert rpc.outstanding == 0


async def test_retries_reuse_the_request_id_then_time_out() -> None:
    rpc, transport, events, _ = endpoint()
    with pytest.raises(RpcTimeout):
        await rpc.request(ADDR, Ping(), attempt_timeout=0.01, retries=2)
    ids = {Codec().decode(data, ADDR).request_id for data, _ in transport.sent}
    assert len(transport.sent) == 3 and len(ids) == 1
    assert events.events.count(DhtMessage("ping", "sent")) == 3
    assert events.events.count(DhtMessage("ping", "timeout")) == 1
    assert rpc.timeouts == 1 and rpc.outstanding == 0


async def test_a_late_answer_to_the_first_attempt_counts() -> None:
    rpc, transport, _, _ = endpoint()
    loop = asyncio.get_running_loop()
    # The answer to the first attempt arrives once the retry has gone out (in the
    # next loop turn, well before the retry's own timer).
    def answer_first_once_retried(data: bytes) -> None:
        if len(transport.sent) == 2:
            loop.call_soon(rpc.datagram_received, reply_to(transport.sent[0][0]), ADDR)

    transport.on_send = answer_first_once_retried
    response = await rpc.request(ADDR, Ping(), attempt_timeout=0.02, retries=1)
    assert isinstance(response.body, Pong) and len(transport.sent) == 2


async def test_a_started_request_needs_no_awaiter_and_a_cancelled_one_is_forgotten() -> None:
    rpc, transport, events, _ = endpoint()
    outcomes: list[BaseException | None] = []
    ended = asyncio.Event()
    lost = rpc.start(ADDR, Ping(), attempt_timeout=0.02)

    def done(future: asyncio.Future[Message]) -> None:
        outcomes.append(future.exception())
        ended.set()

    lost.add_done_callback(done)
    dropped = rpc.start(ADDR, Ping(), attempt_timeout=0.01, retries=1)
    dropped.cancel()
    await asyncio.wait_for(ended.wait(), 10)
    # The first timed out by its timer alone; the cancelled one sent no retry, which
    # would have gone out before that timer fired (its attempt timeout is shorter).
    assert len(outcomes) == 1 and isinstance(outcomes[0], RpcTimeout)
    assert len(transport.sent) == 2 and rpc.outstanding == 0 and rpc.timeouts == 1
    rpc.datagram_received(reply_to(transport.sent[1][0]), ADDR)  # too late for anyone
    assert events.events[-1] == DroppedDatagram("unexpected_response")


async def test_own_datagrams_and_garbage_are_dropped() -> None:
    rpc, _, events, seen = endpoint()
    rpc.datagram_received(Codec().encode(Message(Ping(), 1, OWN, 5000)), ADDR)
    rpc.datagram_received(b"nonsense", ADDR)
    assert seen == []
    assert [e for e in events.events if isinstance(e, DroppedDatagram)] == [
        DroppedDatagram("self"), DroppedDatagram("short")]
    assert rpc.dropped == 2


async def test_requests_go_to_the_handler_and_handler_errors_are_contained() -> None:
    def broken(message: Message) -> None:
        raise RuntimeError("bug")

    events = Events()
    rpc = RpcEndpoint(Codec(), OWN, 5000, broken, events)
    rpc.connection_made(FakeTransport())
    rpc.datagram_received(Codec().encode(Message(Ping(), 1, PEER, 5000)), ADDR)
    assert DroppedDatagram("handler_error") in events.events


async def test_close_fails_outstanding_requests_and_refuses_new_ones() -> None:
    rpc, transport, _, _ = endpoint()
    task = asyncio.create_task(rpc.request(ADDR, Ping(), attempt_timeout=5))
    await asyncio.sleep(0)
    rpc.close()
    rpc.close()
    with pytest.raises(RpcClosed):
        await task
    assert transport.closed
    with pytest.raises(RpcClosed):
        await rpc.request(ADDR, Ping(), attempt_timeout=1)
    assert rpc.send(ADDR, Ping(), 1) == 0  # nothing sent


async def test_ipv4_peers_are_reached_through_mapped_addresses_on_a_v6_socket() -> None:
    class V6Transport(FakeTransport):
        def get_extra_info(self, name: str) -> Any:
            return SimpleNamespace(family=socket.AF_INET6) if name == "socket" else None

    rpc = RpcEndpoint(Codec(), OWN, 5000, lambda message: None, Events())
    transport = V6Transport()
    rpc.connection_made(transport)
    assert rpc.send(ADDR, Ping(), 1) and rpc.send(("fd00::1", 6001), Ping(), 2)
    assert [addr for _, addr in transport.sent] == [("::ffff:127.0.0.1", 6001), ("fd00::1", 6001)]
