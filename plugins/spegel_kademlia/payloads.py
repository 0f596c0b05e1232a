"""The payloads of DHT datagrams: each message body's bytes, both ways (pure: no I/O).

The wire format is described in :mod:`spegel_kademlia.codec`, which frames these
payloads (header, authentication trailer) and re-exports :class:`DecodeError` and
:class:`EncodeError`.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections.abc import Callable
from typing import TypeVar

from spegel_kademlia.ids import ID_BYTES, MAX_ADDRESSES, Contact
from spegel_kademlia.messages import (
    AddProvider,
    AddProviderAck,
    Body,
    Claim,
    ClaimReply,
    Echo,
    FindNode,
    GetProviders,
    MessageType,
    Nodes,
    Ping,
    Pong,
    ProviderInfo,
    Providers,
)

#: Most entries a NODES / PROVIDERS list (or a count byte) holds.
MAX_COUNT = 255
#: Largest entry of one address in a NODES / PROVIDERS list: id, tag, IPv6 address, port.
MAX_SINGLE_ENTRY = ID_BYTES + 1 + 16 + 2
#: Largest entry of all: id and :data:`~spegel_kademlia.ids.MAX_ADDRESSES` IPv6 addresses.
MAX_ENTRY = ID_BYTES + MAX_ADDRESSES * (1 + 16 + 2)
#: Bits of an address's tag byte besides the family (4 or 6) in the low nibble.
TAG_SAME_PORT = 0x40
TAG_MORE = 0x80

_Entry = TypeVar("_Entry", Contact, ProviderInfo)


class DecodeError(Exception):
    """A datagram that is not a valid message; ``reason`` is a short metric label.

    ``message_type`` is the type the header claimed, once the header was read (so a
    dropped ADD_PROVIDER can be counted as one), else None.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.message_type: MessageType | None = None


class EncodeError(ValueError):
    """A message that cannot be encoded (bad field, or too large for one datagram)."""


def check_id(value: bytes, what: str) -> None:
    """Raise :class:`EncodeError` unless ``value`` is a 32-byte id."""
    if not isinstance(value, bytes) or len(value) != ID_BYTES:
        raise EncodeError(f"{what} must be {ID_BYTES} bytes")


def check_port(value: int, what: str, *, allow_zero: bool = False) -> None:
    """Raise :class:`EncodeError` unless ``value`` is a port (0 only if allowed)."""
    if not (0 if allow_zero else 1) <= value <= 0xFFFF:
        raise EncodeError(f"{what} {value} out of range")


# The addresses of one cluster are few and recur in every answer: cache their conversions.
def canonical_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address of an IP literal, IPv4-mapped IPv6 as IPv4; None if ``host`` is not one.

    :param host: an address as text (a datagram's source, a contact's host).
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@functools.lru_cache(maxsize=16384)
def _packed_ip(host: str) -> bytes | None:
    """Family byte + packed address of an IP literal (IPv4-mapped as IPv4); None if not one."""
    ip = canonical_ip(host)
    return None if ip is None else bytes((ip.version,)) + ip.packed


@functools.lru_cache(maxsize=16384)
def _ip_text(packed: bytes) -> str | None:
    """Text of a family byte + packed address; None for unspecified or multicast ones."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    if packed[0] == 4:
        ip = ipaddress.IPv4Address(packed[1:])
    else:
        ip = ipaddress.IPv6Address(packed[1:])
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
    return None if ip.is_unspecified or ip.is_multicast else str(ip)


def _pack_ip(host: str) -> bytes:
    packed = _packed_ip(host) if isinstance(host, str) else None
    if packed is None:
        raise EncodeError(f"not an IP address: {host!r}")
    return packed


def entry_size(item: Contact | ProviderInfo) -> int:
    """Bytes of the entry of ``item`` on the wire (IPv6 for a host that is no IP literal)."""
    return _entry_size(item.host, item.port, item.more)


@functools.lru_cache(maxsize=16384)
def _entry_size(host: str, port: int, more: tuple[tuple[str, int], ...]) -> int:
    size = ID_BYTES
    previous = -1
    for address, address_port in ((host, port), *more):
        packed = _packed_ip(address) if isinstance(address, str) else None
        size += (17 if packed is None else len(packed)) + (0 if address_port == previous else 2)
        previous = address_port
    return size


def _single(item: _Entry) -> _Entry:
    """``item`` with its preferred address only."""
    return type(item)(item.node_id, item.host, item.port)


def take_fitting(items: tuple[_Entry, ...], room: int) -> tuple[_Entry, ...]:
    """The first of ``items`` whose entries fit in ``room`` bytes (at most 255).

    When they do not all fit, the extra addresses go first (from the last entry
    backwards), then whole entries from the end: a list of twenty keeps twenty
    contacts, each at its preferred address at least.
    """
    out = list(items[:MAX_COUNT])
    sizes = [entry_size(item) for item in out]
    total = sum(sizes)
    for n in range(len(out) - 1, -1, -1):
        if total <= room:
            break
        if out[n].more:
            single = _single(out[n])
            size = entry_size(single)
            total -= sizes[n] - size
            sizes[n] = size
            out[n] = single
    while out and total > room:
        out.pop()
        total -= sizes.pop()
    return items if len(out) == len(items) and all(
        a is b for a, b in zip(out, items, strict=True)) else tuple(out)


def _pack_entries(items: tuple[Contact, ...] | tuple[ProviderInfo, ...]) -> bytes:
    if len(items) > MAX_COUNT:
        raise EncodeError(f"{len(items)} entries exceed {MAX_COUNT}")
    out = [bytes((len(items),))]
    out += [_packed_entry(item.node_id, item.host, item.port, item.more) for item in items]
    return b"".join(out)


# The same contacts go out in answer after answer: pack each one once.
@functools.lru_cache(maxsize=16384)
def _packed_entry(node_id: bytes, host: str, port: int,
                  more: tuple[tuple[str, int], ...] = ()) -> bytes:
    """``node id``, then per address: tag (family, same-port and more bits), address, port."""
    check_id(node_id, "node id")
    if not isinstance(more, tuple) or len(more) >= MAX_ADDRESSES:
        raise EncodeError(f"a contact has at most {MAX_ADDRESSES} addresses")
    out = [node_id]
    seen: set[bytes] = set()
    previous = -1
    addresses = ((host, port), *more)
    for n, item in enumerate(addresses):
        if not isinstance(item, tuple) or len(item) != 2:
            raise EncodeError(f"not a (host, port) address: {item!r}")
        address, address_port = item
        check_port(address_port, "port")
        packed = _pack_ip(address)
        if packed in seen:
            raise EncodeError(f"address {address} given twice")
        seen.add(packed)
        tag = packed[0] | (TAG_MORE if n + 1 < len(addresses) else 0)
        if address_port == previous:
            out.append(bytes((tag | TAG_SAME_PORT,)) + packed[1:])
        else:
            out.append(bytes((tag,)) + packed[1:] + address_port.to_bytes(2, "big"))
        previous = address_port
    return b"".join(out)


def encode_body(body: Body) -> bytes:
    """The payload bytes of ``body``; raises :class:`EncodeError` if a field is invalid."""
    match body:
        case Ping() | Pong() | Echo():
            return b""
        case FindNode(target):
            check_id(target, "target")
            return target
        case Nodes(contacts):
            return _pack_entries(contacts)
        case AddProvider(key, provider_id, mirror_port, ttl):
            check_id(key, "key")
            check_id(provider_id, "provider id")
            check_port(mirror_port, "mirror port")
            if not 0 <= ttl < 1 << 32:
                raise EncodeError(f"ttl {ttl} out of range")
            return key + provider_id + struct.pack("!HI", mirror_port, ttl)
        case AddProviderAck(accepted):
            return b"\x01" if accepted else b"\x00"
        case GetProviders(key, wanted):
            check_id(key, "key")
            if not 0 <= wanted <= MAX_COUNT:
                raise EncodeError(f"wanted {wanted} out of range")
            return key + bytes((wanted,))
        case Providers(providers, contacts):
            return _pack_entries(providers) + _pack_entries(contacts)
        case Claim(key, fanout, ttl_ms):
            check_id(key, "key")
            if not 1 <= fanout <= MAX_COUNT or not 0 <= ttl_ms < 1 << 32:
                raise EncodeError(f"claim fanout {fanout} or ttl {ttl_ms} out of range")
            return key + struct.pack("!BI", fanout, ttl_ms)
        case ClaimReply(go, depth, ttl_ms, fetcher, parent):
            if not 0 <= depth <= MAX_COUNT or not 0 <= ttl_ms < 1 << 32:
                raise EncodeError(f"claim depth {depth} or ttl {ttl_ms} out of range")
            parents = () if parent is None else (parent,)
            return (struct.pack("!BBI", int(go), depth, ttl_ms)
                    + _pack_entries((fetcher,)) + _pack_entries(parents))
    raise EncodeError(f"unknown body {type(body).__name__}")


def body_size(body: Body) -> int:
    """Bytes of ``body``'s payload, without encoding it."""
    match body:
        case Nodes(contacts):
            return 1 + sum(entry_size(c) for c in contacts)
        case Providers(providers, contacts):
            return (2 + sum(entry_size(p) for p in providers)
                    + sum(entry_size(c) for c in contacts))
        case FindNode():
            return ID_BYTES
        case AddProvider():
            return 2 * ID_BYTES + 6
        case AddProviderAck():
            return 1
        case GetProviders():
            return ID_BYTES + 1
        case Claim():
            return ID_BYTES + 5
        case ClaimReply(_, _, _, fetcher, parent):
            return (8 + entry_size(fetcher)
                    + (0 if parent is None else entry_size(parent)))
    return 0


class Reader:
    """Bounds-checked reads from ``data[pos:end]``; every failure is a DecodeError."""

    __slots__ = ("contacts_seen", "data", "end", "pos")

    #: Entries of :attr:`contacts_seen` kept at most (then it starts afresh).
    CONTACTS_SEEN = 4096

    def __init__(self, data: bytes, pos: int, end: int,
                 contacts_seen: dict[bytes, Contact]) -> None:
        self.data = data
        self.pos = pos
        self.end = end
        self.contacts_seen = contacts_seen

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes."""
        if self.pos + n > self.end:
            raise DecodeError("short", f"wanted {n} bytes at {self.pos}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        """The next byte."""
        return self.take(1)[0]

    def u16(self) -> int:
        """The next big-endian 16-bit integer."""
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        """The next big-endian 32-bit integer."""
        return int.from_bytes(self.take(4), "big")

    def entries(self) -> list[tuple[bytes, str, int, tuple[tuple[str, int], ...]]]:
        """A count byte, then that many entries: ``(node id, host, port, more)`` each."""
        out: list[tuple[bytes, str, int, tuple[tuple[str, int], ...]]] = []
        for raw, host, port, more in self._entries(None):
            assert host is not None  # (only an entry of ``known`` comes without one)
            out.append((raw[:ID_BYTES], host, port, more))
        return out

    def contacts(self) -> tuple[Contact, ...]:
        """:meth:`entries` as contacts; an entry decoded before gives the same contact."""
        seen = self.contacts_seen
        out: list[Contact] = []
        for raw, host, port, more in self._entries(seen):
            if host is None:
                out.append(seen[raw])
                continue
            contact = Contact(raw[:ID_BYTES], host, port, more)
            if len(seen) >= self.CONTACTS_SEEN:
                seen.clear()
            seen[raw] = contact
            out.append(contact)
        return tuple(out)

    def _entries(self, known: dict[bytes, Contact] | None
                 ) -> list[tuple[bytes, str | None, int, tuple[tuple[str, int], ...]]]:
        """``(raw entry, host, port, more addresses)`` of each entry.

        The host is None for an entry in ``known`` (checked when first decoded).

        One tight loop over the buffer (this runs for every NODES and PROVIDERS
        answer: up to 20 entries each), with the same checks as reading field by field;
        an entry of one address (tag 4 or 6, the usual one) takes the short way.
        """
        data, pos, end = self.data, self.pos, self.end
        if pos >= end:
            raise DecodeError("short", f"wanted 1 bytes at {pos}")
        count = data[pos]
        pos += 1
        out: list[tuple[bytes, str | None, int, tuple[tuple[str, int], ...]]] = []
        for _ in range(count):
            tag_at = pos + ID_BYTES
            if tag_at >= end:
                raise DecodeError("short", f"wanted {ID_BYTES + 1} bytes at {pos}")
            tag = data[tag_at]
            if tag == 4 or tag == 6:
                after = tag_at + (7 if tag == 4 else 19)
                if after > end:
                    raise DecodeError("short", f"wanted {after - pos} bytes at {pos}")
                raw = data[pos:after]
                pos = after
                if known is not None and raw in known:
                    out.append((raw, None, 0, ()))
                    continue
                text = _ip_text(raw[ID_BYTES:-2])
                port = (data[after - 2] << 8) | data[after - 1]
                if port == 0 or text is None:
                    raise DecodeError("address", f"{text} port {port}")
                out.append((raw, text, port, ()))
                continue
            start, pos = pos, self._addresses(tag_at)
            raw = data[start:pos]
            if known is not None and raw in known:
                out.append((raw, None, 0, ()))
                continue
            addresses = self._address_texts(tag_at, pos)
            out.append((raw, addresses[0][0], addresses[0][1], tuple(addresses[1:])))
        self.pos = pos
        return out

    def _addresses(self, pos: int) -> int:
        """The end of the addresses of an entry whose first tag byte is at ``pos``.

        Each address's tag byte is its family (4 or 6) with :data:`TAG_SAME_PORT` (no
        port field: the previous address's port; never on the first) and
        :data:`TAG_MORE` (another address follows; at most
        :data:`~spegel_kademlia.ids.MAX_ADDRESSES` in all); no other bit may be set.
        """
        data, end, start = self.data, self.end, pos - ID_BYTES
        for n in range(MAX_ADDRESSES):
            if pos >= end:
                raise DecodeError("short", f"wanted {pos + 1 - start} bytes at {start}")
            tag = data[pos]
            family = tag & 0x3F
            if family != 4 and family != 6:
                raise DecodeError("address", f"tag {tag:#04x}")
            if tag & TAG_SAME_PORT and n == 0:
                raise DecodeError("address", "first address without a port")
            pos += 1 + (4 if family == 4 else 16) + (0 if tag & TAG_SAME_PORT else 2)
            if pos > end:
                raise DecodeError("short", f"wanted {pos - start} bytes at {start}")
            if not tag & TAG_MORE:
                return pos
        raise DecodeError("address", f"more than {MAX_ADDRESSES} addresses")

    def _address_texts(self, pos: int, end: int) -> list[tuple[str, int]]:
        """``(host, port)`` of each address in ``data[pos:end]`` (checked by :meth:`_addresses`)."""
        data = self.data
        out: list[tuple[str, int]] = []
        port = 0
        while pos < end:
            tag = data[pos]
            family = tag & 0x0F
            after = pos + 1 + (4 if family == 4 else 16)
            text = _ip_text(bytes((family,)) + data[pos + 1:after])
            if not tag & TAG_SAME_PORT:
                port = (data[after] << 8) | data[after + 1]
                after += 2
            if port == 0 or text is None:
                raise DecodeError("address", f"{text} port {port}")
            if any(text == other for other, _ in out):
                raise DecodeError("address", f"{text} given twice")
            out.append((text, port))
            pos = after
        return out


def _decode_ping(reader: Reader) -> Body:
    return Ping()


def _decode_pong(reader: Reader) -> Body:
    return Pong()


def _decode_echo(reader: Reader) -> Body:
    return Echo()


def _decode_find_node(reader: Reader) -> Body:
    return FindNode(reader.take(ID_BYTES))


def _decode_nodes(reader: Reader) -> Body:
    return Nodes(reader.contacts())


def _decode_add_provider(reader: Reader) -> Body:
    key = reader.take(ID_BYTES)
    provider_id = reader.take(ID_BYTES)
    port = reader.u16()
    ttl = reader.u32()
    if port == 0:
        raise DecodeError("address", "mirror port 0")
    return AddProvider(key, provider_id, port, ttl)


def _decode_ack(reader: Reader) -> Body:
    value = reader.u8()
    if value > 1:
        raise DecodeError("value", f"accepted {value}")
    return AddProviderAck(bool(value))


def _decode_get_providers(reader: Reader) -> Body:
    return GetProviders(reader.take(ID_BYTES), reader.u8())


def _decode_providers(reader: Reader) -> Body:
    providers = tuple(ProviderInfo(*e) for e in reader.entries())
    contacts = reader.contacts()
    return Providers(providers, contacts)


def _decode_claim(reader: Reader) -> Body:
    key = reader.take(ID_BYTES)
    fanout = reader.u8()
    if fanout == 0:
        raise DecodeError("value", "fanout 0")
    return Claim(key, fanout, reader.u32())


def _decode_claim_answer(reader: Reader) -> Body:
    go = reader.u8()
    if go > 1:
        raise DecodeError("value", f"go {go}")
    depth = reader.u8()
    ttl_ms = reader.u32()
    fetchers = reader.entries()
    parents = reader.entries()
    if len(fetchers) != 1 or len(parents) > 1 or bool(go) == bool(parents):
        raise DecodeError("value", f"{len(fetchers)} fetchers, {len(parents)} parents, go={go}")
    parent = ProviderInfo(*parents[0]) if parents else None
    return ClaimReply(bool(go), depth, ttl_ms, ProviderInfo(*fetchers[0]), parent)


DECODERS: dict[MessageType, Callable[[Reader], Body]] = {
    MessageType.PING: _decode_ping,
    MessageType.PONG: _decode_pong,
    MessageType.FIND_NODE: _decode_find_node,
    MessageType.NODES: _decode_nodes,
    MessageType.ADD_PROVIDER: _decode_add_provider,
    MessageType.ADD_PROVIDER_ACK: _decode_ack,
    MessageType.GET_PROVIDERS: _decode_get_providers,
    MessageType.PROVIDERS: _decode_providers,
    MessageType.CLAIM: _decode_claim,
    MessageType.CLAIM_ANSWER: _decode_claim_answer,
    MessageType.ECHO: _decode_echo,
}
