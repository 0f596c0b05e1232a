"""Contacts with several addresses: the entry encoding, the table, reaching and answering."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from typing import Any

import pytest

from spegel_core.protocols import Peer
from spegel_kademlia.codec import MAX_DATAGRAM, Codec, DecodeError, EncodeError
from spegel_kademlia.handlers import provider_entry
from spegel_kademlia.ids import MAX_ADDRESSES, Contact, random_id_in_bucket, with_addresses
from spegel_kademlia.messages import Message, Nodes, Ping, Pong, ProviderInfo, Providers
from spegel_kademlia.reach import (
    BOTH,
    preferred,
    provider_peer,
    reachable,
    socket_families,
    start_request,
)
from spegel_kademlia.rpc import RpcClosed, RpcEndpoint, RpcTimeout, _only_allowed
from spegel_kademlia.store import ProviderRecord
from spegel_kademlia.table import RoutingTable
from tests.unit.kademlia.test_kademlia_rpc import Events, FakeTransport

KEY = b"cluster-key-0123456789abcdef0123"
SOURCE = ("127.0.0.1", 5001)
NODE = b"\x07" * 32
OWN = bytes(32)
HEADER = b"SK\x02\x04\x00" + bytes(42)  # a NODES datagram's header, unauthenticated


def message(body: Any) -> Message:
    return Message(body, request_id=42, sender=b"\x01" * 32, mirror_port=5000)


def payload(codec: Codec, body: Any) -> bytes:
    return codec.encode(message(body))[47:]


# -- the entry on the wire --------------------------------------------------------------
def test_a_one_address_entry_is_unchanged_and_a_dual_stack_one_adds_17_bytes() -> None:
    codec = Codec()
    v4 = ipaddress.IPv4Address("10.0.0.1").packed
    v6 = ipaddress.IPv6Address("fd00::1").packed
    port = (5001).to_bytes(2, "big")
    assert payload(codec, Nodes((Contact(NODE, "10.0.0.1", 5001),))) == (
        b"\x01" + NODE + b"\x04" + v4 + port)
    dual = Contact(NODE, "10.0.0.1", 5001, (("fd00::1", 5001),))
    # The IPv4 address says "more follows" (0x80); the IPv6 one shares the port (0x40).
    assert payload(codec, Nodes((dual,))) == b"\x01" + NODE + b"\x84" + v4 + port + b"\x46" + v6
    other_port = Contact(NODE, "10.0.0.1", 5001, (("fd00::1", 6001),))
    assert payload(codec, Nodes((other_port,))) == (
        b"\x01" + NODE + b"\x84" + v4 + port + b"\x06" + v6 + (6001).to_bytes(2, "big"))
    for body in (Nodes((dual, other_port)), Providers((ProviderInfo(NODE, "fd00::1", 5000,
                                                                    (("10.0.0.1", 5000),)),),
                                                      (dual,))):
        data = codec.encode(message(body))
        assert len(data) == codec.size(message(body))
        assert codec.decode(data, SOURCE).body == body


def test_twenty_dual_stack_contacts_fit_whole_with_the_auth_trailer() -> None:
    codec = Codec(KEY)
    dual = tuple(Contact(bytes([i]) * 32, f"10.0.0.{i + 1}", 5001, ((f"fd00::{i + 1}", 5001),))
                 for i in range(20))
    fitted = codec.fit(message(Nodes(dual)))
    assert fitted.body == Nodes(dual)
    assert len(codec.encode(fitted)) == 47 + 1 + 20 * 56 + 40 <= MAX_DATAGRAM


def test_fit_drops_extra_addresses_from_the_end_before_any_contact() -> None:
    codec = Codec(KEY)
    three = tuple(Contact(bytes([i]) * 32, f"fd00::{i + 1}", 5001,
                          ((f"fd01::{i + 1}", 5002), (f"fd02::{i + 1}", 5003)))
                  for i in range(20))
    fitted = codec.fit(message(Nodes(three)))
    assert isinstance(fitted.body, Nodes)
    contacts = fitted.body.contacts
    assert [c.node_id for c in contacts] == [c.node_id for c in three]  # all twenty
    assert [c.address for c in contacts] == [c.address for c in three]  # each preferred one
    kept = [c.more for c in contacts]
    assert kept[0] == three[0].more and kept[-1] == ()
    assert kept == sorted(kept, key=len, reverse=True)  # stripped from the end only
    assert len(codec.encode(fitted)) <= MAX_DATAGRAM
    with pytest.raises(EncodeError):
        codec.encode(message(Nodes(three)))
    # Providers first: they keep their addresses, the closer contacts give way.
    providers = tuple(ProviderInfo(c.node_id, c.host, 5000, tuple((h, 5000) for h, _ in c.more))
                      for c in three[:3])
    fitted = codec.fit(message(Providers(providers, three)))
    assert isinstance(fitted.body, Providers) and fitted.body.providers == providers
    contacts = fitted.body.contacts
    # Every extra address went before the first contact did.
    assert 15 <= len(contacts) < 20 and all(not c.more for c in contacts)
    assert [c.address for c in contacts] == [c.address for c in three[:len(contacts)]]
    assert len(codec.encode(fitted)) <= MAX_DATAGRAM


V4 = bytes(4 * [10])
V6 = ipaddress.IPv6Address("fd00::9").packed
PORT = b"\x13\x89"


@pytest.mark.parametrize(("entry", "reason"), [
    (b"\x14" + V4 + PORT, "address"),  # a tag bit that means nothing
    (b"\x44" + V4, "address"),  # "same port" on the first address
    (b"\x84" + V4 + PORT + b"\x86" + V6 + PORT + b"\x86" + V6[:-1] + b"\x01" + PORT
     + b"\x04" + V4 + PORT, "address"),  # a fourth address
    (b"\x84" + V4 + PORT, "short"),  # "more" and nothing after it
    (b"\x84" + V4 + PORT + b"\x46", "short"),  # a second address cut short
    (b"\x84" + V4 + PORT + b"\x44" + V4, "address"),  # the same address twice
    (b"\x84" + V4 + PORT + b"\x06" + b"\x00" * 10 + b"\xff\xff" + V4 + PORT,
     "address"),  # the same address twice, once IPv4-mapped
    (b"\x84" + V4 + PORT + b"\x06" + V6 + b"\x00\x00", "address"),  # port 0 on the second
    (b"\x84" + V4 + PORT + b"\x46" + bytes(16), "address"),  # unspecified second address
])
def test_malformed_entries_are_decode_errors(entry: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        Codec().decode(HEADER + b"\x01" + NODE + entry, SOURCE)
    assert info.value.reason == reason


@pytest.mark.parametrize("more", [
    (("fd00::1", 1), ("fd00::2", 1), ("fd00::3", 1)),  # four addresses in all
    (("10.0.0.1", 7),),  # the first address again, another port
    (("::ffff:10.0.0.1", 5001),),  # the first address again, IPv4-mapped
    (("fd00::1", 0),),
    (("not-an-ip", 5001),),
    (("fd00::1",),),
])
def test_encode_refuses_bad_address_lists(more: Any) -> None:
    with pytest.raises(EncodeError):
        Codec().encode(message(Nodes((Contact(NODE, "10.0.0.1", 5001, more),))))


def test_with_addresses_keeps_order_drops_duplicates_and_is_bounded() -> None:
    contact = Contact(NODE, "10.0.0.1", 1)
    assert with_addresses(contact, (("10.0.0.1", 1),)) is contact
    many = tuple((f"10.0.0.{i}", 1) for i in range(2, 7))
    grown = with_addresses(contact, (("10.0.0.2", 1), *many))
    assert grown.addresses == many[:MAX_ADDRESSES]
    with pytest.raises(ValueError, match="at least one"):
        with_addresses(contact, ())


# -- the routing table ------------------------------------------------------------------
def far(host: str, port: int = 5001, node_id: bytes | None = None) -> Contact:
    return Contact(node_id or random_id_in_bucket(OWN, 255), host, port)


def test_one_node_heard_at_two_addresses_is_one_contact_with_both() -> None:
    table = RoutingTable(OWN, k=4, max_per_ip=2)
    v4 = far("10.0.0.1")
    table.add(v4)
    assert table.admits(Contact(v4.node_id, "fd00::1", 5001))  # a new address to prove
    assert not table.admits(v4)  # nothing new
    table.add(Contact(v4.node_id, "fd00::1", 5001))
    assert len(table) == 1 and table.bucket(255) == [table.get(v4.node_id)]
    # The address heard from last is preferred; the other follows.
    assert table.get(v4.node_id) == Contact(v4.node_id, "fd00::1", 5001, (v4.address,))
    same = table.get(v4.node_id)
    table.add(Contact(v4.node_id, "fd00::1", 5001))
    assert table.get(v4.node_id) is same  # heard again where it is preferred: no change
    table.add(v4)
    assert table.get(v4.node_id) == Contact(v4.node_id, "10.0.0.1", 5001, (("fd00::1", 5001),))
    # A new port on a listed host replaces that address (the node moved).
    table.add(Contact(v4.node_id, "fd00::1", 6001))
    assert table.get(v4.node_id) == Contact(v4.node_id, "fd00::1", 6001, (v4.address,))
    assert table.closest(v4.node_id) == [table.get(v4.node_id)]


def test_every_address_counts_for_diversity() -> None:
    table = RoutingTable(OWN, k=20, max_per_ip=1)
    a = far("10.0.0.1")
    table.add(a)
    table.add(Contact(a.node_id, "fd00::1", 5001))
    # A's IPv6 /64 and its IPv4 address are both taken: nobody else gets in there.
    assert not table.admits(far("fd00::2"))
    assert not table.admits(far("10.0.0.1", 7))
    b = far("10.0.0.2")
    table.add(b)
    table.add(Contact(b.node_id, "fd00::3", 5001))  # A's /64: refused as b's address
    assert table.get(b.node_id) == b
    assert not table.admits(Contact(b.node_id, "fd00::3", 5001))
    table.add(Contact(b.node_id, "10.0.0.1", 9))  # A's IP: refused too
    assert table.get(b.node_id) == b
    # Removing A releases every address it held.
    table.remove(a.node_id)
    assert table.admits(far("fd00::2")) and table.admits(far("10.0.0.1", 7))


def test_an_id_holds_its_group_once_however_many_addresses_fall_in_it() -> None:
    table = RoutingTable(OWN, k=20, max_per_ip=2)
    a = far("fd00::1")
    table.add(a)
    table.add(Contact(a.node_id, "fd00::2", 5001))  # the same /64
    assert table.get(a.node_id) is not None and len(table.get(a.node_id).addresses) == 2
    assert table.admits(far("fd00::3"))  # A counts once: room for one more id


# -- reaching ---------------------------------------------------------------------------
def test_socket_families() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        assert socket_families(sock) == {4}
    assert socket_families(None) == BOTH
    if not socket.has_ipv6:
        return
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
        assert socket_families(sock) == BOTH
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(("::", 0))
        assert socket_families(sock) == {6}
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("::1", 0))
        except OSError:
            return
        assert socket_families(sock) == {6}


def test_reachable_and_preferred_keep_order_within_a_family() -> None:
    listed = [("fd00::1", 1), ("10.0.0.1", 2), ("::ffff:10.0.0.2", 3), ("name", 4)]
    assert reachable(listed, frozenset({4})) == [("10.0.0.1", 2), ("::ffff:10.0.0.2", 3),
                                                ("name", 4)]
    assert reachable(listed, frozenset({6})) == [("fd00::1", 1), ("name", 4)]
    assert preferred(listed, frozenset({4})) == [*reachable(listed, frozenset({4})),
                                                ("fd00::1", 1)]
    assert preferred(listed, BOTH) == listed


def test_provider_peer_adds_addresses_the_table_proved_for_the_same_host() -> None:
    contact = Contact(NODE, "fd00::1", 5001, (("10.0.0.1", 5001),))
    record = ProviderInfo(NODE, "10.0.0.1", 5000)
    assert provider_peer(contact, frozenset({4}), record) == Peer(
        "10.0.0.1", 5000, NODE, (("fd00::1", 5000),))
    # An IPv6-only node puts the IPv6 address first.
    assert provider_peer(contact, frozenset({6}), record) == Peer(
        "fd00::1", 5000, NODE, (("10.0.0.1", 5000),))
    # A record at an address the table never proved for that id gains nothing.
    stranger = ProviderInfo(NODE, "10.9.9.9", 5000)
    assert provider_peer(contact, BOTH, stranger) == Peer("10.9.9.9", 5000, NODE)
    assert provider_peer(None, BOTH, record) == Peer("10.0.0.1", 5000, NODE)
    assert Peer("10.0.0.1", 5000, NODE, (("fd00::1", 5000),)).addresses() == [
        Peer("10.0.0.1", 5000, NODE), Peer("fd00::1", 5000, NODE)]


def test_providers_are_answered_at_every_address_proved_for_them() -> None:
    table = RoutingTable(OWN, k=20)
    node = far("10.0.0.1").node_id
    table.add(Contact(node, "10.0.0.1", 5001))
    table.add(Contact(node, "fd00::1", 5001))
    record = ProviderRecord(node, "10.0.0.1", 5000, expires=1e9)
    assert provider_entry(record, table) == ProviderInfo(node, "10.0.0.1", 5000,
                                                         (("fd00::1", 5000),))
    forged = ProviderRecord(node, "10.6.6.6", 5000, expires=1e9)
    assert provider_entry(forged, table) == ProviderInfo(node, "10.6.6.6", 5000)


def test_peer_cidrs_filter_every_address_of_an_entry() -> None:
    allowed = ipaddress.ip_network("10.0.0.0/8")

    def allows(host: str) -> bool:
        return ipaddress.ip_address(host) in allowed

    mixed = Contact(NODE, "fd00::1", 5001, (("10.0.0.1", 5001),))
    outside = Contact(b"\x08" * 32, "fd00::2", 5001)
    inside = Contact(b"\x09" * 32, "10.0.0.9", 5001)
    filtered = _only_allowed(message(Nodes((mixed, outside, inside))), allows)
    assert filtered.body == Nodes((Contact(NODE, "10.0.0.1", 5001), inside))
    provider = ProviderInfo(NODE, "10.0.0.1", 5000, (("fd00::1", 5000),))
    filtered = _only_allowed(message(Providers((provider,), (inside,))), allows)
    assert filtered.body == Providers((ProviderInfo(NODE, "10.0.0.1", 5000),), (inside,))
    same = message(Nodes((inside,)))
    assert _only_allowed(same, allows) is same


def endpoint() -> tuple[RpcEndpoint, FakeTransport]:
    rpc = RpcEndpoint(Codec(), OWN, 5000, lambda m: None, Events())
    transport = FakeTransport()
    rpc.connection_made(transport)
    return rpc, transport


def answer(rpc: RpcEndpoint, data: bytes, source: tuple[str, int]) -> None:
    request = Codec().decode(data, source)
    rpc.datagram_received(Codec().encode(Message(Pong(), request.request_id, NODE, 5000)),
                          source)


async def wait_sent(transport: FakeTransport, count: int) -> None:
    deadline = time.monotonic() + 5
    while len(transport.sent) < count:
        assert time.monotonic() < deadline, f"{count} datagrams not sent in time"
        await asyncio.sleep(0.005)


async def test_a_request_falls_back_to_the_next_reachable_address() -> None:
    rpc, transport = endpoint()
    contact = Contact(NODE, "10.0.0.1", 5001, (("fd00::1", 5001), ("10.0.0.2", 5002)))
    future = start_request(rpc, contact, Ping(), families=frozenset({4}),
                           attempt_timeout=0.02)
    await wait_sent(transport, 2)
    # IPv6 is skipped (the socket cannot reach it): 10.0.0.1, then 10.0.0.2.
    assert [addr for _, addr in transport.sent] == [("10.0.0.1", 5001), ("10.0.0.2", 5002)]
    # An answer from the dead first address's host under the second's id does not count.
    answer(rpc, transport.sent[1][0], ("10.0.0.2", 5002))
    reply = await future
    assert (reply.source_host, reply.source_port) == ("10.0.0.2", 5002)
    assert rpc.timeouts == 1 and rpc.outstanding == 0


async def test_every_address_timing_out_is_one_timeout_and_closing_stops_at_once() -> None:
    rpc, transport = endpoint()
    contact = Contact(NODE, "10.0.0.1", 5001, (("10.0.0.2", 5001),))
    future = start_request(rpc, contact, Ping(), families=BOTH, attempt_timeout=0.01,
                           retries=1)
    with pytest.raises(RpcTimeout):
        await future
    assert len(transport.sent) == 4  # two attempts at each address
    closing = start_request(rpc, contact, Ping(), families=BOTH, attempt_timeout=5)
    await wait_sent(transport, 5)
    rpc.close()
    with pytest.raises(RpcClosed):
        await closing
    assert len(transport.sent) == 5  # the second address was not tried


async def test_cancelling_a_fallback_request_forgets_the_attempt_in_flight() -> None:
    rpc, transport = endpoint()
    contact = Contact(NODE, "10.0.0.1", 5001, (("10.0.0.2", 5001),))
    future = start_request(rpc, contact, Ping(), families=BOTH, attempt_timeout=5)
    await wait_sent(transport, 1)
    assert rpc.outstanding == 1
    future.cancel()
    await asyncio.sleep(0)
    assert rpc.outstanding == 0 or all(p.future.cancelled() for p in rpc._pending.values())


async def test_one_address_is_a_plain_request() -> None:
    rpc, transport = endpoint()
    future = start_request(rpc, Contact(NODE, "10.0.0.1", 5001), Ping(), families=BOTH,
                           attempt_timeout=1)
    await wait_sent(transport, 1)
    answer(rpc, transport.sent[0][0], ("10.0.0.1", 5001))
    assert isinstance((await future).body, Pong)


def test_contact_str_lists_every_address() -> None:
    contact = Contact(b"\x01" * 32, "10.0.0.1", 5001, (("fd00::1", 5001),))
    assert str(contact) == "010101010101@10.0.0.1:5001,[fd00::1]:5001"
