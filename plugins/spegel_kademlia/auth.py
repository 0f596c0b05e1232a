"""The optional authentication of DHT datagrams (pure: no I/O).

With a cluster key every datagram ends in a trailer (the wire format is in
:mod:`spegel_kademlia.codec`)::

    timestamp     8   unix time of sending, milliseconds
    mac          32   HMAC-SHA256(cluster key, every byte before the mac)

A datagram is accepted when its MAC matches one of the keys, its timestamp is within
``max_skew`` of the receiver's clock, and its MAC was not accepted before: the MACs
accepted are remembered for twice ``max_skew``, so a captured datagram cannot be replayed
(from another address, say) while its timestamp is fresh. Several keys serve a rotation:
the first signs, any is accepted (``docs/security.md``).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable, Sequence

#: Shortest cluster key accepted, in bytes.
MIN_KEY_BYTES = 16
#: Most keys accepted at once (each costs one HMAC per datagram that fails the others).
MAX_KEYS = 4

_TIMESTAMP = struct.Struct("!Q")
_MAC_BYTES = 32
#: Bytes the trailer adds to a datagram.
TRAILER_BYTES = _TIMESTAMP.size + _MAC_BYTES


class AuthError(Exception):
    """A datagram whose trailer does not check out; ``reason`` is a short metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class DatagramAuth:
    """Signs datagrams with the first of ``keys`` and checks them against all of them.

    :param keys: 1 to :data:`MAX_KEYS` keys of at least :data:`MIN_KEY_BYTES` bytes.
    :param max_skew: accepted clock difference in seconds.
    :param clock: wall clock in seconds (for tests).
    """

    def __init__(self, keys: Sequence[bytes], *, max_skew: float,
                 clock: Callable[[], float]) -> None:
        if not keys:
            raise ValueError("no cluster key")
        if len(keys) > MAX_KEYS:
            raise ValueError(f"at most {MAX_KEYS} cluster keys")
        for key in keys:
            if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
                raise ValueError(f"a cluster key needs at least {MIN_KEY_BYTES} bytes")
        self._keys = tuple(keys)
        self.max_skew = max_skew
        self._clock = clock
        self._seen: dict[bytes, float] = {}  # accepted MACs (prefix) -> when to forget
        self.replay_cache_size = 65536

    @property
    def key_count(self) -> int:
        """How many keys datagrams are accepted under."""
        return len(self._keys)

    def sign(self, data: bytes) -> bytes:
        """``data`` with the trailer (timestamp and MAC) appended."""
        data += _TIMESTAMP.pack(int(self._clock() * 1000) & ((1 << 64) - 1))
        return data + hmac.new(self._keys[0], data, hashlib.sha256).digest()

    def verify(self, data: bytes, start: int) -> int:
        """Where the signed part of ``data`` ends (the trailer starts).

        :param data: the whole datagram.
        :param start: bytes that must come before the trailer.
        :returns: the offset of the trailer.
        :raises AuthError: the trailer is missing, stale, replayed or wrong.
        """
        end = len(data) - TRAILER_BYTES
        if end < start:
            raise AuthError("short", "no auth trailer")
        signed = data[: len(data) - _MAC_BYTES]
        mac = data[len(data) - _MAC_BYTES :]
        for key in self._keys:
            expected = hmac.new(key, signed, hashlib.sha256).digest()
            if hmac.compare_digest(expected, mac):
                break
        else:
            raise AuthError("mac")
        (millis,) = _TIMESTAMP.unpack_from(data, end)
        now = self._clock()
        if abs(millis / 1000 - now) > self.max_skew:
            raise AuthError("stale", f"timestamp {millis}")
        seen = self._seen
        while seen:
            oldest = next(iter(seen))
            if seen[oldest] > now and len(seen) < self.replay_cache_size:
                break
            del seen[oldest]
        tag = expected[:16]
        if tag in seen:
            raise AuthError("replay")
        seen[tag] = now + 2 * self.max_skew
        return end
