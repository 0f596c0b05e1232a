"""The versioned binary datagram codec of the DHT (pure: no I/O).

Wire format, integers big-endian::

    header, 47 bytes
      magic         2   b"SK"
      version       1   1
      type          1   MessageType
      flags         1   bit 0: the auth trailer is present
                        bit 1: a cookie follows the payload
                        bit 2: zero padding follows the payload (and cookie)
                        other bits must be 0
      request id    8   random per request, echoed by its response
      sender id    32   node id of the sender
      mirror port   2   where the sender's mirror (HTTP) listens
    payload             depends on the type, below
    cookie         8   iff flag bit 1: address validation (below)
    padding      >=1   iff flag bit 2: zero bytes, up to the trailer
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
    ECHO                (empty; carries the cookie it returns, flag bit 1)
    entry               node id 32, then 1 to 3 addresses, best first, each:
                          tag 1       family (4 or 6) | 0x40 same port | 0x80 more
                          address     4 or 16 bytes, by the family
                          port 2      absent with 0x40: the previous address's port
                        0x80: another address of the same node follows. A one-address
                        entry is id, family, address, port (38 or 50 bytes); a
                        dual-stack node on one port adds 17 (an IPv4 and an IPv6 one)

Address validation (open DHT, :mod:`spegel_kademlia.admission`): a FIND_NODE or
GET_PROVIDERS is padded to :data:`PADDED_REQUEST` bytes, a third of the largest answer,
so that answering it in full never sends more than 3x the bytes received (QUIC pads its
first packet for the same reason). An answer to a sender not yet validated carries a
cookie bound to the sender's address and id; the sender proves it receives at that
address by returning it in an ECHO.

A provider's address is never read from a payload that announces it: ADD_PROVIDER has
none, the receiver records the datagram's source address.

Size: a datagram is at most :data:`MAX_DATAGRAM` bytes (1280-byte IPv6 minimum MTU less
40 + 8 bytes of IPv6 and UDP headers), so it never fragments. :meth:`Codec.encode`
refuses anything larger; :meth:`Codec.fit` trims NODES and PROVIDERS to fit: first the
extra addresses of the last entries, then entries from the end of each list (closer
contacts first, then providers), so callers order lists best first. Twenty contacts
always fit, even IPv6 with the auth trailer (each keeps its preferred address, 50 bytes
at most: 47 + 1 + 20 x 50 + 40 = 1088), and twenty dual-stack contacts on one port keep
both addresses (47 + 1 + 20 x 56 + 40 = 1208 <= 1232); a PROVIDERS answer carries about a
dozen providers, which is more than a lookup asks for.

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
import operator
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from spegel_kademlia.auth import TRAILER_BYTES, AuthError, DatagramAuth
from spegel_kademlia.ids import Contact
from spegel_kademlia.messages import (
    Message,
    MessageType,
    Nodes,
    Providers,
)
from spegel_kademlia.payloads import (
    DECODERS,
    MAX_COUNT,
    MAX_SINGLE_ENTRY,
    DecodeError,
    EncodeError,
    Reader,
    body_size,
    canonical_ip,
    check_id,
    check_port,
    encode_body,
    entry_size,
    take_fitting,
)

__all__ = ["COOKIE_BYTES", "FLAG_AUTH", "FLAG_COOKIE", "FLAG_PADDING", "MAGIC", "MAX_DATAGRAM",
           "PADDED_REQUEST", "VERSION", "Codec", "DecodeError", "EncodeError"]

MAGIC = b"SK"
#: 2: cookies, padding and ECHO (address validation in one datagram).
VERSION = 2
#: Largest datagram sent or accepted: IPv6 minimum MTU less the IPv6 and UDP headers.
MAX_DATAGRAM = 1280 - 40 - 8
#: Size a padded request is brought to: any answer (<= MAX_DATAGRAM) is within 3x of it.
PADDED_REQUEST = -(-MAX_DATAGRAM // 3)
COOKIE_BYTES = 8
FLAG_AUTH = 0x01
FLAG_COOKIE = 0x02
FLAG_PADDING = 0x04
_FLAGS = FLAG_AUTH | FLAG_COOKIE | FLAG_PADDING
#: Requests whose answers can be large: padded when the codec pads.
_PADDED_TYPES = frozenset({MessageType.FIND_NODE, MessageType.GET_PROVIDERS})

_HEADER = struct.Struct("!2sBBBQ32sH")
_more = operator.attrgetter("more")


class Codec:
    """Encodes and decodes messages, optionally authenticated with a cluster key.

    :param key: HMAC-SHA256 cluster pre-shared key, or several (datagrams are signed
        with the first and accepted under any), or None for no authentication.
    :param max_skew: accepted clock difference in seconds for authenticated datagrams.
    :param max_size: the largest datagram encoded or decoded.
    :param clock: wall clock in seconds (for tests).
    :param pad: pad FIND_NODE and GET_PROVIDERS to :data:`PADDED_REQUEST` bytes (the
        open DHT: receivers answer unvalidated senders with at most 3x their bytes).
    """

    def __init__(
        self,
        key: bytes | Sequence[bytes] | None = None,
        *,
        max_skew: float = 30.0,
        max_size: int = MAX_DATAGRAM,
        clock: Callable[[], float] = time.time,
        pad: bool = False,
    ) -> None:
        keys = [] if key is None else [key] if isinstance(key, bytes) else list(key)
        self._auth = DatagramAuth(keys, max_skew=max_skew, clock=clock) if keys else None
        self.max_size = max_size
        self.pad = pad
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
        check_id(message.sender, "sender id")
        check_port(message.mirror_port, "mirror port", allow_zero=True)
        if not 0 <= message.request_id < 1 << 64:
            raise EncodeError("request id out of range")
        flags = FLAG_AUTH if self._auth is not None else 0
        mtype = message.type
        cookie = message.cookie
        tail = b""
        if cookie:
            if len(cookie) != COOKIE_BYTES:
                raise EncodeError(f"cookie of {len(cookie)} bytes")
            flags |= FLAG_COOKIE
            tail = cookie
        payload = encode_body(message.body)
        if self.pad and mtype in _PADDED_TYPES:
            short = PADDED_REQUEST - self.overhead - len(payload) - len(tail)
            if short > 0:
                flags |= FLAG_PADDING
                tail += bytes(short)
        data = _HEADER.pack(MAGIC, VERSION, mtype, flags, message.request_id,
                            message.sender, message.mirror_port) + payload + tail
        if self._auth is not None:
            data = self._auth.sign(data)
        if len(data) > self.max_size:
            raise EncodeError(f"{message.type.label} of {len(data)} bytes exceeds {self.max_size}")
        return data

    def size(self, message: Message) -> int:
        """Encoded size of ``message`` in bytes (without encoding it)."""
        size = self.overhead + body_size(message.body) + (COOKIE_BYTES if message.cookie else 0)
        if self.pad and size < PADDED_REQUEST and message.type in _PADDED_TYPES:
            return PADDED_REQUEST
        return size

    def fit(self, message: Message) -> Message:
        """``message`` with NODES / PROVIDERS lists trimmed from the end to fit one datagram."""
        body = message.body
        room = self.max_size - self.overhead - (COOKIE_BYTES if message.cookie else 0)
        if isinstance(body, Nodes | Providers):
            entries = len(body.contacts) + (
                len(body.providers) if isinstance(body, Providers) else 0)
            if (entries <= MAX_COUNT and MAX_SINGLE_ENTRY * entries <= room - 2
                    and not any(map(_more, body.contacts))
                    and not (isinstance(body, Providers) and any(map(_more, body.providers)))):
                return message  # one address each, whatever the family (the usual case)
        if isinstance(body, Nodes):
            contacts = take_fitting(body.contacts, room - 1)
            return message if contacts == body.contacts else replace(message, body=Nodes(contacts))
        if isinstance(body, Providers):
            providers = take_fitting(body.providers, room - 2)
            used = sum(entry_size(p) for p in providers)
            contacts = take_fitting(body.contacts, room - 2 - used)
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
            if flags & ~_FLAGS:
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
            reader = Reader(data, _HEADER.size, end, self._contacts)
            body = DECODERS[mtype](reader)
            cookie = reader.take(COOKIE_BYTES) if flags & FLAG_COOKIE else b""
            if flags & FLAG_PADDING:
                if reader.pos >= end or data.count(0, reader.pos, end) != end - reader.pos:
                    raise DecodeError("padding", f"{end - reader.pos} bytes")
            elif reader.pos != end:
                raise DecodeError("trailing", f"{end - reader.pos} bytes")
        except DecodeError as exc:
            exc.message_type = mtype
            raise
        return Message(body, request_id, sender, mirror_port, host, port, cookie, len(data))


@functools.lru_cache(maxsize=16384)
def _source_host(host: str) -> str | None:
    ip = canonical_ip(host)
    return None if ip is None else str(ip)


def _source(source: tuple[Any, ...]) -> tuple[str, int]:
    try:
        host, port = source[0], source[1]
    except (TypeError, IndexError, KeyError):
        raise DecodeError("source", repr(source)[:60]) from None
    text = _source_host(host) if isinstance(host, str) else None
    if text is None or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise DecodeError("source", repr(source)[:60])
    return text, port
