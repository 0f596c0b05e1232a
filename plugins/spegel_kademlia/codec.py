"""The versioned binary datagram codec of the DHT (pure: no I/O).

Wire format, integers big-endian::

    header, 47 bytes
      magic         2   b"SK"
      version       1   1
      type          1   MessageType
      flags         1   bit 0: the auth trailer is present; other bits must be 0
      request id    8   random per request, echoed by its response
      sender id    32   node id of the sender
      mirror port   2   where the sender's mirror (HTTP) listens
    payload             depends on the type, below
    auth trailer, 40 bytes, present iff flag bit 0
      timestamp     8   unix time of sending, milliseconds
      mac          32   HMAC-SHA256(cluster key, every byte before the mac)

    PING, PONG          (empty)
    FIND_NODE           target id 32
    NODES               count 1, count x entry
    ADD_PROVIDER        key id 32, provider id 32, mirror port 2, ttl seconds 4 (0: remove)
    ADD_PROVIDER_ACK    accepted 1 (0 or 1)
    GET_PROVIDERS       key id 32, wanted 1
    PROVIDERS           count 1, count x entry (port = mirror port),
                        count 1, count x entry (closer contacts, port = UDP port)
    CLAIM               key id 32, fanout 1, ttl ms 4 (0: release)
    CLAIM_ANSWER        go 1 (0 or 1), depth 1, ttl ms 4, count 1 (1), fetcher entry,
                        count 1 (0 or 1), count x parent entry (ports = mirror ports)
    entry               node id 32, family 1 (4 or 6), address 4 or 16, port 2

A provider's address is never read from a payload that announces it: ADD_PROVIDER has
none, the receiver records the datagram's source address.

Size: a datagram is at most :data:`MAX_DATAGRAM` bytes (1280-byte IPv6 minimum MTU less
40 + 8 bytes of IPv6 and UDP headers), so it never fragments. :meth:`Codec.encode`
refuses anything larger; :meth:`Codec.fit` trims NODES and PROVIDERS to fit by dropping
entries from the end of each list (closer contacts first, then providers), so callers
order lists best first. Twenty contacts always fit, even IPv6 with the auth trailer; a
PROVIDERS answer carries about a dozen providers, which is more than a lookup asks for.

Authentication: with a cluster key every datagram carries the trailer and a datagram
without one is dropped; without a key a datagram carrying one is dropped too, so a
half-configured cluster fails loudly (counted drops) rather than silently. The trailer's
checks (timestamps within ``max_skew``, 30 s; no replays) are
:class:`~spegel_kademlia.auth.DatagramAuth`'s.

Key rotation: a codec may hold several keys. It signs with the first and accepts a
datagram signed with any of them, so a cluster changes its key in three rolls
(``docs/security.md``): add the new key second, then make it first, then drop the old.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from spegel_kademlia.auth import TRAILER_BYTES, AuthError, DatagramAuth
from spegel_kademlia.ids import ID_BYTES, Contact
from spegel_kademlia.messages import (
    AddProvider,
    AddProviderAck,
    Body,
    Claim,
    ClaimReply,
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

MAGIC = b"SK"
VERSION = 1
#: Largest datagram sent or accepted: IPv6 minimum MTU less the IPv6 and UDP headers.
MAX_DATAGRAM = 1280 - 40 - 8
FLAG_AUTH = 0x01

_HEADER = struct.Struct("!2sBBBQ32sH")
_MAX_COUNT = 255
#: Largest entry of a NODES / PROVIDERS list: id, family byte, IPv6 address, port.
_MAX_ENTRY = ID_BYTES + 1 + 16 + 2

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


class Codec:
    """Encodes and decodes messages, optionally authenticated with a cluster key.

    :param key: HMAC-SHA256 cluster pre-shared key, or several (datagrams are signed
        with the first and accepted under any), or None for no authentication.
    :param max_skew: accepted clock difference in seconds for authenticated datagrams.
    :param max_size: the largest datagram encoded or decoded.
    :param clock: wall clock in seconds (for tests).
    """

    def __init__(
        self,
        key: bytes | Sequence[bytes] | None = None,
        *,
        max_skew: float = 30.0,
        max_size: int = MAX_DATAGRAM,
        clock: Callable[[], float] = time.time,
    ) -> None:
        keys = [] if key is None else [key] if isinstance(key, bytes) else list(key)
        self._auth = DatagramAuth(keys, max_skew=max_skew, clock=clock) if keys else None
        self.max_size = max_size
        # Contacts decoded before, by their wire entry: a node hears of the same
        # neighbourhood in answer after answer (a join's ~25 answers of 20 contacts name
        # far fewer distinct nodes). Contacts are never mutated, so one object serves.
        self._contacts: dict[bytes, Contact] = {}

    @property
    def authenticated(self) -> bool:
        """Whether datagrams carry (and must carry) a MAC."""
        return self._auth is not None

    @property
    def key_count(self) -> int:
        """How many keys datagrams are accepted under (0: unauthenticated)."""
        return 0 if self._auth is None else self._auth.key_count

    @property
    def overhead(self) -> int:
        """Bytes of every datagram outside the payload (header and trailer)."""
        return _HEADER.size + (TRAILER_BYTES if self._auth is not None else 0)

    # -- encoding ---------------------------------------------------------------------
    def encode(self, message: Message) -> bytes:
        """The datagram of ``message``; raises :class:`EncodeError` if invalid or too big."""
        _check_id(message.sender, "sender id")
        _check_port(message.mirror_port, "mirror port", allow_zero=True)
        if not 0 <= message.request_id < 1 << 64:
            raise EncodeError("request id out of range")
        flags = FLAG_AUTH if self._auth is not None else 0
        data = _HEADER.pack(MAGIC, VERSION, message.type, flags, message.request_id,
                            message.sender, message.mirror_port) + _encode_body(message.body)
        if self._auth is not None:
            data = self._auth.sign(data)
        if len(data) > self.max_size:
            raise EncodeError(f"{message.type.label} of {len(data)} bytes exceeds {self.max_size}")
        return data

    def size(self, message: Message) -> int:
        """Encoded size of ``message`` in bytes (without encoding it)."""
        return self.overhead + _body_size(message.body)

    def fit(self, message: Message) -> Message:
        """``message`` with NODES / PROVIDERS lists trimmed from the end to fit one datagram."""
        body = message.body
        room = self.max_size - self.overhead
        if isinstance(body, Nodes | Providers):
            entries = len(body.contacts) + (
                len(body.providers) if isinstance(body, Providers) else 0)
            if entries <= _MAX_COUNT and _MAX_ENTRY * entries <= room - 2:
                return message  # fits whatever the address families (the usual case)
        if isinstance(body, Nodes):
            contacts = _take_fitting(body.contacts, room - 1)
            return message if contacts == body.contacts else replace(message, body=Nodes(contacts))
        if isinstance(body, Providers):
            providers = _take_fitting(body.providers, room - 2)
            used = sum(_entry_size(p.host) for p in providers)
            contacts = _take_fitting(body.contacts, room - 2 - used)
            if providers == body.providers and contacts == body.contacts:
                return message
            return replace(message, body=Providers(providers, contacts))
        return message

    # -- decoding ---------------------------------------------------------------------
    def decode(self, data: bytes, source: tuple[Any, ...]) -> Message:
        """Parse a datagram received from ``source`` (``(host, port, ...)``).

        Raises :class:`DecodeError` for anything malformed, and nothing else.
        """
        if isinstance(data, bytearray | memoryview):
            data = bytes(data)
        elif not isinstance(data, bytes):
            raise DecodeError("type", "not bytes")
        host, port = _source(source)
        if len(data) > self.max_size:
            raise DecodeError("size", f"{len(data)} bytes")
        if len(data) < _HEADER.size:
            raise DecodeError("short", "no header")
        magic, version, type_byte, flags, request_id, sender, mirror_port = _HEADER.unpack_from(
            data
        )
        if magic != MAGIC:
            raise DecodeError("magic")
        if version != VERSION:
            raise DecodeError("version", str(version))
        try:
            mtype = MessageType(type_byte)
        except ValueError:
            raise DecodeError("type", str(type_byte)) from None
        try:
            if flags & ~FLAG_AUTH:
                raise DecodeError("flags", hex(flags))
            end = len(data)
            if flags & FLAG_AUTH:
                if self._auth is None:
                    raise DecodeError("auth_unexpected")
                try:
                    end = self._auth.verify(data, _HEADER.size)
                except AuthError as exc:
                    raise DecodeError(exc.reason, exc.detail) from None
            elif self._auth is not None:
                raise DecodeError("auth_missing")
            reader = _Reader(data, _HEADER.size, end, self._contacts)
            body = _DECODERS[mtype](reader)
            if reader.pos != end:
                raise DecodeError("trailing", f"{end - reader.pos} bytes")
        except DecodeError as exc:
            exc.message_type = mtype
            raise
        return Message(body, request_id, sender, mirror_port, host, port)

# -- helpers ------------------------------------------------------------------------------
def _check_id(value: bytes, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != ID_BYTES:
        raise EncodeError(f"{what} must be {ID_BYTES} bytes")


def _check_port(value: int, what: str, *, allow_zero: bool = False) -> None:
    if not (0 if allow_zero else 1) <= value <= 0xFFFF:
        raise EncodeError(f"{what} {value} out of range")


# The addresses of one cluster are few and recur in every answer: cache their conversions.
@functools.lru_cache(maxsize=16384)
def _packed_ip(host: str) -> bytes | None:
    """Family byte + packed address of an IP literal (IPv4-mapped as IPv4); None if not one."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bytes((ip.version,)) + ip.packed


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


@functools.lru_cache(maxsize=16384)
def _source_host(host: str) -> str | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def _pack_ip(host: str) -> bytes:
    packed = _packed_ip(host) if isinstance(host, str) else None
    if packed is None:
        raise EncodeError(f"not an IP address: {host!r}")
    return packed


def _entry_size(host: str) -> int:
    packed = _packed_ip(host) if isinstance(host, str) else None
    return ID_BYTES + (17 if packed is None else len(packed)) + 2


def _take_fitting(items: tuple[_Entry, ...], room: int) -> tuple[_Entry, ...]:
    used = 0
    for n, item in enumerate(items[:_MAX_COUNT]):
        used += _entry_size(item.host)
        if used > room:
            return items[:n]
    return items[:_MAX_COUNT]


def _pack_entries(items: tuple[Contact, ...] | tuple[ProviderInfo, ...]) -> bytes:
    if len(items) > _MAX_COUNT:
        raise EncodeError(f"{len(items)} entries exceed {_MAX_COUNT}")
    out = [bytes((len(items),))]
    out += [_packed_entry(item.node_id, item.host, item.port) for item in items]
    return b"".join(out)


# The same contacts go out in answer after answer: pack each one once.
@functools.lru_cache(maxsize=16384)
def _packed_entry(node_id: bytes, host: str, port: int) -> bytes:
    _check_id(node_id, "node id")
    _check_port(port, "port")
    return node_id + _pack_ip(host) + port.to_bytes(2, "big")


def _encode_body(body: Body) -> bytes:
    match body:
        case Ping() | Pong():
            return b""
        case FindNode(target):
            _check_id(target, "target")
            return target
        case Nodes(contacts):
            return _pack_entries(contacts)
        case AddProvider(key, provider_id, mirror_port, ttl):
            _check_id(key, "key")
            _check_id(provider_id, "provider id")
            _check_port(mirror_port, "mirror port")
            if not 0 <= ttl < 1 << 32:
                raise EncodeError(f"ttl {ttl} out of range")
            return key + provider_id + struct.pack("!HI", mirror_port, ttl)
        case AddProviderAck(accepted):
            return b"\x01" if accepted else b"\x00"
        case GetProviders(key, wanted):
            _check_id(key, "key")
            if not 0 <= wanted <= _MAX_COUNT:
                raise EncodeError(f"wanted {wanted} out of range")
            return key + bytes((wanted,))
        case Providers(providers, contacts):
            return _pack_entries(providers) + _pack_entries(contacts)
        case Claim(key, fanout, ttl_ms):
            _check_id(key, "key")
            if not 1 <= fanout <= _MAX_COUNT or not 0 <= ttl_ms < 1 << 32:
                raise EncodeError(f"claim fanout {fanout} or ttl {ttl_ms} out of range")
            return key + struct.pack("!BI", fanout, ttl_ms)
        case ClaimReply(go, depth, ttl_ms, fetcher, parent):
            if not 0 <= depth <= _MAX_COUNT or not 0 <= ttl_ms < 1 << 32:
                raise EncodeError(f"claim depth {depth} or ttl {ttl_ms} out of range")
            parents = () if parent is None else (parent,)
            return (struct.pack("!BBI", int(go), depth, ttl_ms)
                    + _pack_entries((fetcher,)) + _pack_entries(parents))
    raise EncodeError(f"unknown body {type(body).__name__}")


def _body_size(body: Body) -> int:
    match body:
        case Nodes(contacts):
            return 1 + sum(_entry_size(c.host) for c in contacts)
        case Providers(providers, contacts):
            return (2 + sum(_entry_size(p.host) for p in providers)
                    + sum(_entry_size(c.host) for c in contacts))
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
            return (8 + _entry_size(fetcher.host)
                    + (0 if parent is None else _entry_size(parent.host)))
    return 0


def _source(source: tuple[Any, ...]) -> tuple[str, int]:
    try:
        host, port = source[0], source[1]
    except (TypeError, IndexError, KeyError):
        raise DecodeError("source", repr(source)[:60]) from None
    text = _source_host(host) if isinstance(host, str) else None
    if text is None or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise DecodeError("source", repr(source)[:60])
    return text, port


class _Reader:
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
        if self.pos + n > self.end:
            raise DecodeError("short", f"wanted {n} bytes at {self.pos}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def entries(self) -> list[tuple[bytes, str, int]]:
        """A count byte, then that many ``id + family + address + port`` entries."""
        out: list[tuple[bytes, str, int]] = []
        for raw, text, port in self._entries(None):
            assert text is not None  # (only an entry of ``known`` comes without text)
            out.append((raw[:ID_BYTES], text, port))
        return out

    def contacts(self) -> tuple[Contact, ...]:
        """:meth:`entries` as contacts; an entry decoded before gives the same contact."""
        seen = self.contacts_seen
        out: list[Contact] = []
        for raw, text, port in self._entries(seen):
            if text is None:
                out.append(seen[raw])
                continue
            contact = Contact(raw[:ID_BYTES], text, port)
            if len(seen) >= self.CONTACTS_SEEN:
                seen.clear()
            seen[raw] = contact
            out.append(contact)
        return tuple(out)

    def _entries(self, known: dict[bytes, Contact] | None
                 ) -> list[tuple[bytes, str | None, int]]:
        """``(raw entry, address text, port)`` of each entry; text None for an entry in
        ``known`` (already checked when it was first decoded).

        One tight loop over the buffer (this runs for every NODES and PROVIDERS
        answer: up to 20 entries each), with the same checks as reading field by field.
        """
        data, pos, end = self.data, self.pos, self.end
        if pos >= end:
            raise DecodeError("short", f"wanted 1 bytes at {pos}")
        count = data[pos]
        pos += 1
        out: list[tuple[bytes, str | None, int]] = []
        for _ in range(count):
            if pos + ID_BYTES + 1 > end:
                raise DecodeError("short", f"wanted {ID_BYTES + 1} bytes at {pos}")
            family = data[pos + ID_BYTES]
            if family == 4:
                size = 4
            elif family == 6:
                size = 16
            else:
                raise DecodeError("address", f"family {family}")
            after = pos + ID_BYTES + 1 + size + 2
            if after > end:
                raise DecodeError("short", f"wanted {after - pos} bytes at {pos}")
            raw = data[pos:after]
            if known is not None and raw in known:
                out.append((raw, None, 0))
                pos = after
                continue
            text = _ip_text(raw[ID_BYTES:-2])
            port = (data[after - 2] << 8) | data[after - 1]
            if port == 0 or text is None:
                raise DecodeError("address", f"{text} port {port}")
            out.append((raw, text, port))
            pos = after
        self.pos = pos
        return out


def _decode_ping(reader: _Reader) -> Body:
    return Ping()


def _decode_pong(reader: _Reader) -> Body:
    return Pong()


def _decode_find_node(reader: _Reader) -> Body:
    return FindNode(reader.take(ID_BYTES))


def _decode_nodes(reader: _Reader) -> Body:
    return Nodes(reader.contacts())


def _decode_add_provider(reader: _Reader) -> Body:
    key = reader.take(ID_BYTES)
    provider_id = reader.take(ID_BYTES)
    port = reader.u16()
    ttl = reader.u32()
    if port == 0:
        raise DecodeError("address", "mirror port 0")
    return AddProvider(key, provider_id, port, ttl)


def _decode_ack(reader: _Reader) -> Body:
    value = reader.u8()
    if value > 1:
        raise DecodeError("value", f"accepted {value}")
    return AddProviderAck(bool(value))


def _decode_get_providers(reader: _Reader) -> Body:
    return GetProviders(reader.take(ID_BYTES), reader.u8())


def _decode_providers(reader: _Reader) -> Body:
    providers = tuple(ProviderInfo(*e) for e in reader.entries())
    contacts = reader.contacts()
    return Providers(providers, contacts)


def _decode_claim(reader: _Reader) -> Body:
    key = reader.take(ID_BYTES)
    fanout = reader.u8()
    if fanout == 0:
        raise DecodeError("value", "fanout 0")
    return Claim(key, fanout, reader.u32())


def _decode_claim_answer(reader: _Reader) -> Body:
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


_DECODERS: dict[MessageType, Callable[[_Reader], Body]] = {
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
}
