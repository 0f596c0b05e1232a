"""The datagram codec: round trips, size limits, authentication and fuzzing."""

from __future__ import annotations

import ipaddress
import random
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spegel_kademlia.codec import MAX_DATAGRAM, PADDED_REQUEST, Codec, DecodeError, EncodeError
from spegel_kademlia.ids import Contact
from spegel_kademlia.messages import (
    AddProvider,
    AddProviderAck,
    Body,
    Claim,
    ClaimReply,
    Echo,
    FindNode,
    GetProviders,
    Message,
    MessageType,
    Nodes,
    Ping,
    Pong,
    ProviderInfo,
    Providers,
)
from spegel_kademlia.payloads import Reader
from tests.fuzzing import fuzz_scale

KEY = b"cluster-key-0123456789abcdef0123"
SOURCE = ("127.0.0.1", 5001)


def _valid_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if ip.is_unspecified or ip.is_multicast:
        return False
    return not (isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None)


ids = st.binary(min_size=32, max_size=32)
hosts = st.ip_addresses().filter(_valid_ip).map(str)
ports = st.integers(1, 65535)
# Up to three distinct addresses per entry; ports often shared (the same-port tag bit).
address_lists = st.lists(st.tuples(hosts, st.one_of(st.sampled_from([5000, 5001]), ports)),
                         min_size=1, max_size=3, unique_by=lambda a: a[0])
contacts = st.builds(lambda i, a: Contact(i, a[0][0], a[0][1], tuple(a[1:])), ids, address_lists)
providers = st.builds(lambda i, a: ProviderInfo(i, a[0][0], a[0][1], tuple(a[1:])),
                      ids, address_lists)
bodies: st.SearchStrategy[Body] = st.one_of(
    st.just(Ping()),
    st.just(Pong()),
    st.builds(FindNode, ids),
    st.builds(Nodes, st.lists(contacts, max_size=25).map(tuple)),
    st.builds(AddProvider, ids, ids, ports, st.integers(0, 2**32 - 1)),
    st.builds(AddProviderAck, st.booleans()),
    st.builds(GetProviders, ids, st.integers(0, 255)),
    st.builds(Providers, st.lists(providers, max_size=30).map(tuple),
              st.lists(contacts, max_size=25).map(tuple)),
    st.builds(Claim, ids, st.integers(1, 255), st.integers(0, 2**32 - 1)),
    st.builds(ClaimReply, st.just(True), st.integers(0, 255), st.integers(0, 2**32 - 1),
              providers),
    st.builds(ClaimReply, st.just(False), st.integers(0, 255), st.integers(0, 2**32 - 1),
              providers, providers),
    st.just(Echo()),
)
cookies = st.one_of(st.just(b""), st.binary(min_size=8, max_size=8))
messages = st.builds(Message, bodies, st.integers(0, 2**64 - 1), ids, st.integers(0, 65535),
                     cookie=cookies)


def sample_message(body: Body | None = None) -> Message:
    return Message(body or Ping(), request_id=42, sender=b"\x01" * 32, mirror_port=5000)


@settings(max_examples=300, deadline=None)
@given(messages, st.booleans(), st.booleans())
def test_round_trip(message: Message, keyed: bool, pad: bool) -> None:
    codec = Codec(KEY if keyed else None, pad=pad)
    fitted = codec.fit(message)
    data = codec.encode(fitted)
    assert len(data) == codec.size(fitted) <= MAX_DATAGRAM
    if pad and fitted.type in (MessageType.FIND_NODE, MessageType.GET_PROVIDERS):
        assert len(data) == PADDED_REQUEST  # an answer of any size is within 3x of it
    decoded = codec.decode(data, SOURCE)
    assert decoded.body == fitted.body
    assert decoded.cookie == fitted.cookie
    assert decoded.size == len(data)
    assert (decoded.request_id, decoded.sender, decoded.mirror_port) == (
        fitted.request_id, fitted.sender, fitted.mirror_port)
    assert (decoded.source_host, decoded.source_port) == SOURCE
    assert decoded.type is fitted.type


def test_fit_keeps_providers_first_and_twenty_ipv6_contacts_always_fit() -> None:
    codec = Codec(KEY)
    six = tuple(Contact(bytes([i]) * 32, f"fd00::{i + 1}", 5001) for i in range(20))
    assert codec.fit(sample_message(Nodes(six))).body == Nodes(six)
    many = tuple(ProviderInfo(bytes([i]) * 32, f"10.0.0.{i + 1}", 5000) for i in range(40))
    fitted = codec.fit(sample_message(Providers(many, six)))
    assert isinstance(fitted.body, Providers)
    assert fitted.body.providers == many[: len(fitted.body.providers)]
    assert len(fitted.body.providers) >= 20
    assert len(codec.encode(fitted)) <= MAX_DATAGRAM
    with pytest.raises(EncodeError):
        codec.encode(sample_message(Providers(many, six)))


def test_ipv4_mapped_source_and_entries_become_ipv4() -> None:
    codec = Codec()
    body = Nodes((Contact(b"\x02" * 32, "::ffff:10.1.2.3", 5001),))
    decoded = codec.decode(codec.encode(sample_message(body)), ("::ffff:127.0.0.1", 9, 0, 0))
    assert decoded.source_host == "127.0.0.1"
    assert decoded.body == Nodes((Contact(b"\x02" * 32, "10.1.2.3", 5001),))


@pytest.mark.parametrize("bad", [
    sample_message(FindNode(b"short")),
    Message(Ping(), request_id=-1, sender=b"\x01" * 32, mirror_port=5000),
    Message(Ping(), request_id=1, sender=b"\x01" * 31, mirror_port=5000),
    Message(Ping(), request_id=1, sender=b"\x01" * 32, mirror_port=70000),
    sample_message(Nodes((Contact(b"\x02" * 32, "not-an-ip", 5001),))),
    sample_message(Nodes((Contact(b"\x02" * 32, "10.0.0.1", 0),))),
    sample_message(AddProvider(b"\x03" * 32, b"\x01" * 32, 5000, 2**32)),
])
def test_encode_rejects_invalid_fields(bad: Message) -> None:
    with pytest.raises(EncodeError):
        Codec().encode(bad)


def test_contacts_decoded_again_are_the_same_objects_and_still_checked() -> None:
    codec = Codec()
    contacts = tuple(Contact(bytes([n]) * 32, f"10.1.0.{n}", 5001) for n in range(1, 21))
    data = codec.encode(Message(Nodes(contacts), 7, b"\x09" * 32, 5000))
    first = codec.decode(data, SOURCE).body
    again = codec.decode(data, SOURCE).body
    assert isinstance(first, Nodes) and isinstance(again, Nodes)
    assert first.contacts == again.contacts == contacts
    assert all(a is b for a, b in zip(first.contacts, again.contacts, strict=True))
    # A known entry does not excuse the rest of the datagram.
    with pytest.raises(DecodeError):
        codec.decode(data[:-3], SOURCE)
    # The memory of decoded contacts is bounded: once more than it keeps were decoded,
    # the first ones are decoded afresh (equal, not the same objects), then shared again.
    for n in range(Reader.CONTACTS_SEEN + 1):
        one = Contact(n.to_bytes(32, "big"), "10.2.0.1", 1 + n)
        codec.decode(codec.encode(Message(Nodes((one,)), n, b"\x09" * 32, 5000)), SOURCE)
    fresh = codec.decode(data, SOURCE).body
    assert isinstance(fresh, Nodes) and fresh.contacts == contacts
    assert not any(a is b for a, b in zip(first.contacts, fresh.contacts, strict=True))
    shared = codec.decode(data, SOURCE).body
    assert isinstance(shared, Nodes)
    assert all(a is b for a, b in zip(fresh.contacts, shared.contacts, strict=True))


def test_keyed_node_drops_unauthenticated_and_unkeyed_drops_authenticated() -> None:
    plain = Codec().encode(sample_message())
    signed = Codec(KEY).encode(sample_message())
    with pytest.raises(DecodeError) as info:
        Codec(KEY).decode(plain, SOURCE)
    assert info.value.reason == "auth_missing"
    with pytest.raises(DecodeError) as info:
        Codec().decode(signed, SOURCE)
    assert info.value.reason == "auth_unexpected"
    with pytest.raises(DecodeError) as info:
        Codec(b"another-cluster-key-000000000000").decode(signed, SOURCE)
    assert info.value.reason == "mac"


def at(when: float) -> Callable[[], float]:
    return lambda: when


def test_timestamp_window() -> None:
    now = 1_800_000_000.0
    data = Codec(KEY, clock=at(now)).encode(sample_message())
    assert Codec(KEY, clock=at(now + 29)).decode(data, SOURCE).type is MessageType.PING
    for skew in (31.0, -31.0):
        with pytest.raises(DecodeError) as info:
            Codec(KEY, clock=at(now + skew)).decode(data, SOURCE)
        assert info.value.reason == "stale"


def test_authenticated_datagrams_cannot_be_replayed() -> None:
    now = [1_800_000_000.0]
    codec = Codec(KEY, clock=lambda: now[0])
    data = codec.encode(sample_message())
    assert codec.decode(data, SOURCE).type is MessageType.PING
    with pytest.raises(DecodeError) as info:
        codec.decode(data, ("10.6.6.6", 5001))
    assert info.value.reason == "replay"
    assert codec.decode(codec.encode(sample_message(Pong())), SOURCE).type is MessageType.PONG
    now[0] += 61  # forgotten once stale anyway
    with pytest.raises(DecodeError) as info:
        codec.decode(data, SOURCE)
    assert info.value.reason == "stale"


def test_tampered_authenticated_datagram_is_rejected() -> None:
    codec = Codec(KEY)
    data = bytearray(codec.encode(sample_message(FindNode(b"\x05" * 32))))
    data[60] ^= 0x01
    with pytest.raises(DecodeError) as info:
        codec.decode(bytes(data), SOURCE)
    assert info.value.reason == "mac"


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "short"),
    (b"XX" + bytes(45), "magic"),
    (b"SK\x01" + bytes(44), "version"),
    (b"SK\x02\x63" + bytes(43), "type"),
    (b"SK\x02\x01\x80" + bytes(42), "flags"),
    (b"SK\x02\x03\x00" + bytes(42) + b"\x00" * 31, "short"),
    (b"SK\x02\x01\x00" + bytes(42) + b"\x00", "trailing"),
    (b"SK\x02\x04\x00" + bytes(42) + b"\x01" + bytes(32) + b"\x05", "address"),
    (b"SK\x02\x06\x00" + bytes(42) + b"\x02", "value"),
    # A cookie flag without its 8 bytes; padding missing or not zeros; bytes after a cookie.
    (b"SK\x02\x0b\x02" + bytes(42) + bytes(7), "short"),
    (b"SK\x02\x03\x04" + bytes(42) + bytes(32), "padding"),
    (b"SK\x02\x03\x04" + bytes(42) + bytes(32) + b"\x00\x01", "padding"),
    (b"SK\x02\x0b\x02" + bytes(42) + bytes(9), "trailing"),
    (bytes(MAX_DATAGRAM + 1), "size"),
])
def test_decode_reasons(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        Codec().decode(data, SOURCE)
    assert info.value.reason == reason


def test_bad_source_is_a_decode_error() -> None:
    data = Codec().encode(sample_message())
    for source in [(), ("nonsense", 1), ("127.0.0.1", -1), ("127.0.0.1",)]:
        with pytest.raises(DecodeError):
            Codec().decode(data, source)


def _valid_datagrams(codec: Codec, rng: random.Random) -> list[bytes]:
    def ident() -> bytes:
        return rng.randbytes(32)

    def contact(i: int) -> Contact:
        host = f"10.0.{i}.{rng.randint(1, 254)}" if rng.random() < 0.7 else f"fd00::{i + 1:x}"
        port = rng.randint(1, 65535)
        more = [(f"fd01::{i + 1:x}", port), (f"10.1.{i}.1", rng.randint(1, 65535))]
        return Contact(ident(), host, port, tuple(more[:rng.randint(0, 2)]))

    cs = tuple(contact(i) for i in range(20))
    ps = tuple(ProviderInfo(c.node_id, c.host, c.port, c.more) for c in cs[:8])
    bodies: list[Body] = [
        Ping(), Pong(), FindNode(ident()), Nodes(cs), AddProvider(ident(), ident(), 5000, 1140),
        AddProviderAck(True), GetProviders(ident(), 3), Providers(ps, cs[:10]),
    ]
    return [codec.encode(codec.fit(sample_message(b))) for b in bodies]


def _mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if choice < 0.4 and buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif choice < 0.6:
            del buf[rng.randrange(len(buf) + 1):]
        elif choice < 0.8:
            pos = rng.randrange(len(buf) + 1)
            buf[pos:pos] = rng.randbytes(rng.randint(1, 40))
        elif len(buf) > 47:
            # Plausible counts and families in the payload.
            pos = rng.randrange(47, len(buf))
            buf[pos] = rng.choice([0, 1, 4, 6, 20, 255, 0x44, 0x46, 0x84, 0x86, 0xC4, 0xC6, 0x94])
    return bytes(buf)


@pytest.mark.fuzz
@pytest.mark.parametrize("keyed", [False, True])
def test_fuzz_decode_only_raises_decode_error(keyed: bool) -> None:
    rng = random.Random(20240 + keyed)
    codec = Codec(KEY if keyed else None)
    valid = _valid_datagrams(codec, rng)
    header = struct.pack("!2sBBB", b"SK", 1, 4, 1 if keyed else 0)
    decoded = 0
    for i in range(20_000 * fuzz_scale()):
        if i % 2:
            data = rng.randbytes(rng.randint(0, 2000))
            if i % 4 == 1:  # a valid-looking header so the payload parser is reached
                data = header + data[5:]
        else:
            data = _mutate(rng.choice(valid), rng)
        try:
            message = codec.decode(data, SOURCE)
        except DecodeError:
            continue
        decoded += 1
        fresh = Codec(KEY if keyed else None)
        assert fresh.decode(fresh.encode(message), SOURCE).body == message.body
    assert decoded > 0 or keyed
