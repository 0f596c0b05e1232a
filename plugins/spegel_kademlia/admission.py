"""Address validation before trust, for the open DHT (bookkeeping only: no I/O).

UDP source addresses can be forged, so on an open DHT (no cluster key) a request proves
nothing about where it came from. Without care, a node answers a 79-byte FIND_NODE with
~830 bytes to whatever address the datagram claims (a reflector, as open DNS resolvers
and memcached were), and adds the claimed id and address to its routing table (so one
sender fills it with made-up ids pointing anywhere). What this module keeps:

- **Validated addresses**: ``(host, port) -> node id`` pairs proven by a round trip. A
  response matched to one of this node's own requests (a random 64-bit request id, and
  the address it was sent to) is proof, so every contact learnt by asking is validated
  for free. A sender only known from its own requests is validated by a **cookie**: the
  answer to it carries 8 bytes keyed by a secret of this node and bound to the sender's
  address and id (as DNS cookies and QUIC's address-validation tokens are), and the
  sender returns them in an ECHO. Only someone receiving at that address can, so the
  ECHO proves it: one datagram, no state kept while waiting for it (the secret changes
  every :attr:`Admission.cookie_period` seconds; a cookie of the period before is still
  taken). Only validated contacts enter the routing table.
- **Anti-amplification credit** (QUIC's rule): an unvalidated source earns ``factor``
  (3) times the bytes it sent, and nothing is sent to it beyond that. Requests whose
  answers are large come padded to a third of the largest datagram
  (:data:`~spegel_kademlia.codec.PADDED_REQUEST`), so an honest sender's answer is
  always whole; an unpadded one's is cut to its credit.
- **A rate limit per source IP**: a token bucket of answers per second, tight for
  unvalidated sources, generous for validated ones (it bounds work, not honest traffic).

:class:`~spegel_kademlia.gate.RequestGate` applies this to every datagram.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from spegel_kademlia.codec import COOKIE_BYTES
from spegel_kademlia.ids import Contact

Address = tuple[str, int]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class Admission:
    """Validated addresses, cookies, amplification credit and answer rates.

    :param factor: bytes an unvalidated source may be sent per byte it sent.
    :param credit_cap: most credit one address can bank (bytes).
    :param rate: answers per second per source IP once validated (0: unlimited).
    :param unvalidated_rate: answers per second per source IP before (0: unlimited);
        each bucket holds twice its rate.
    :param max_validated: validated addresses remembered (least recently used go first).
    :param cookie_period: seconds between changes of the cookie secret.
    :param clock: monotonic seconds.
    :param secret: the first cookie secret (random by default; for tests).
    """

    def __init__(
        self,
        *,
        factor: float = 3.0,
        credit_cap: int = 4096,
        rate: float = 2000.0,
        unvalidated_rate: float = 50.0,
        max_validated: int = 16384,
        cookie_period: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        secret: bytes | None = None,
    ) -> None:
        self.factor = factor
        self.credit_cap = credit_cap
        self.rate = rate
        self.unvalidated_rate = unvalidated_rate
        self.max_validated = max_validated
        self.cookie_period = cookie_period
        self._clock = clock
        self._secret = secret or os.urandom(32)
        self._old_secret = self._secret
        self._secret_at = clock()
        # Plain dicts (half the memory of OrderedDicts; a node keeps one entry per
        # address it talks to), bounded by dropping the oldest entry first.
        self._validated: dict[Address, bytes] = {}
        self._credit: dict[Address, float] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._unvalidated_buckets: dict[str, _Bucket] = {}
        self.validations = 0
        self.cookies_sent = 0
        self.bad_cookies = 0

    # -- validation -------------------------------------------------------------------
    def is_validated(self, contact: Contact) -> bool:
        """Whether ``contact``'s address was proven, under this id."""
        return self._validated.get((contact.host, contact.port)) == contact.node_id

    def validate(self, contact: Contact) -> None:
        """Record that a round trip proved ``contact`` (its address answers, as its id)."""
        key = (contact.host, contact.port)
        if self._validated.get(key) != contact.node_id:
            self.validations += 1
            self._validated.pop(key, None)
            self._validated[key] = contact.node_id
            _bound(self._validated, self.max_validated)
        self._credit.pop(key, None)

    # -- anti-amplification -----------------------------------------------------------
    def earn(self, address: Address, received: int) -> None:
        """An unvalidated ``address`` sent ``received`` bytes: it may get ``factor`` x that.

        Credit is kept per ``host:port``: whatever the split, the bytes sent to an
        address never exceed ``factor`` times those received from it.
        """
        credit = min(self.credit_cap, self._credit.pop(address, 0.0) + self.factor * received)
        self._credit[address] = credit
        _bound(self._credit, self.max_validated)

    def spend(self, address: Address, size: int) -> bool:
        """Take ``size`` bytes of ``address``'s credit; False (nothing taken) if short."""
        credit = self._credit.get(address, 0.0)
        if credit < size:
            return False
        self._credit[address] = credit - size
        return True

    def credit(self, address: Address) -> float:
        """Bytes ``address`` may still be sent before it is validated."""
        return self._credit.get(address, 0.0)

    # -- rate limit -------------------------------------------------------------------
    def allow(self, host: str, validated: bool) -> bool:
        """Take one answer from ``host``'s token bucket; False when it is empty."""
        rate = self.rate if validated else self.unvalidated_rate
        if rate <= 0:
            return True
        now = self._clock()
        buckets = self._buckets if validated else self._unvalidated_buckets
        bucket = buckets.get(host)
        if bucket is None:
            bucket = buckets[host] = _Bucket(2 * rate, now)
            _bound(buckets, self.max_validated)
        else:
            bucket.tokens = min(2 * rate, bucket.tokens + (now - bucket.at) * rate)
            bucket.at = now
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

    # -- cookies ----------------------------------------------------------------------
    def cookie(self, contact: Contact) -> bytes:
        """The cookie for ``contact`` (its address and id) under the current secret."""
        self._rotate()
        self.cookies_sent += 1
        return _cookie(self._secret, contact)

    def check_cookie(self, contact: Contact, cookie: bytes) -> bool:
        """Whether ``cookie`` was given to ``contact``; if so, ``contact`` is validated.

        A cookie of the current or the previous secret is taken.
        """
        self._rotate()
        if len(cookie) == COOKIE_BYTES and (
                hmac.compare_digest(cookie, _cookie(self._secret, contact))
                or hmac.compare_digest(cookie, _cookie(self._old_secret, contact))):
            self.validate(contact)
            return True
        self.bad_cookies += 1
        return False

    def _rotate(self) -> None:
        now = self._clock()
        if now - self._secret_at >= self.cookie_period:
            # Two periods or more since the last change: no cookie of the old secret
            # can still be wanted either.
            stale = now - self._secret_at >= 2 * self.cookie_period
            self._old_secret = os.urandom(32) if stale else self._secret
            self._secret = os.urandom(32)
            self._secret_at = now

    def __repr__(self) -> str:
        return (f"<Admission validated={len(self._validated)} "
                f"cookies_sent={self.cookies_sent} credit_hosts={len(self._credit)}>")


def _bound(entries: dict[Any, Any], limit: int) -> None:
    """Drop the oldest entries of ``entries`` beyond ``limit``."""
    while len(entries) > limit:
        del entries[next(iter(entries))]


def _cookie(secret: bytes, contact: Contact) -> bytes:
    data = f"{contact.host}|{contact.port}|".encode() + contact.node_id
    return hashlib.blake2b(data, key=secret, digest_size=COOKIE_BYTES).digest()
