"""Address validation before trust, for the open DHT (bookkeeping only: no I/O).

UDP source addresses can be forged, so on an open DHT (no cluster key) a request proves
nothing about where it came from. Without care, a node answers a 79-byte FIND_NODE with
~830 bytes to whatever address the datagram claims (a reflector, as open DNS resolvers
and memcached were), and adds the claimed id and address to its routing table (so one
sender fills it with made-up ids pointing anywhere). What this module keeps:

- **Validated addresses**: ``(host, port) -> node id`` pairs proven by a round trip. A
  response matched to one of this node's own requests (a random 64-bit request id, and
  the address it was sent to) is proof, so every contact learnt by asking is validated
  for free. A sender only known from its own requests is validated by a PING from this
  node (the request id is the nonce, as DNS cookies and QUIC's address validation use a
  token): only validated contacts enter the routing table.
- **Anti-amplification credit** (QUIC's rule): an unvalidated source earns ``factor``
  (3) times the bytes it sent, and nothing is sent to it beyond that. An answer that does
  not fit is held while the PING validates the address, and sent (in full) when the PONG
  arrives; a spoofed source never answers, so its victim gets at most one small PING per
  timeout.
- **A rate limit per source IP**: a token bucket of answers per second, tight for
  unvalidated sources, generous for validated ones (it bounds work, not honest traffic).
- **Challenges**: at most one PING in flight per address and a bounded number of held
  requests, each address and overall.

:class:`~spegel_kademlia.gate.RequestGate` applies this to every datagram.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from spegel_kademlia.ids import Contact
from spegel_kademlia.messages import Message

Address = tuple[str, int]


class Hold(Enum):
    """What :meth:`Admission.hold` decided."""

    #: A new challenge: send the validation PING now.
    CHALLENGE = "challenge"
    #: A challenge of this address is in flight: the request waits for it.
    WAITING = "waiting"
    #: Too many challenges or held requests: drop the request.
    FULL = "full"


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


@dataclass(slots=True)
class Challenge:
    """A validation PING in flight: the id it must come back from, requests held."""

    node_id: bytes
    held: list[Message] = field(default_factory=list)


class Admission:
    """Validated addresses, amplification credit, answer rates and challenges.

    :param factor: bytes an unvalidated source may be sent per byte it sent.
    :param credit_cap: most credit one address can bank (bytes).
    :param rate: answers per second per source IP once validated (0: unlimited).
    :param unvalidated_rate: answers per second per source IP before (0: unlimited);
        each bucket holds twice its rate.
    :param max_validated: validated addresses remembered (least recently used go first).
    :param max_challenges: challenges in flight at once.
    :param max_held: requests held per challenged address.
    :param clock: monotonic seconds.
    """

    def __init__(
        self,
        *,
        factor: float = 3.0,
        credit_cap: int = 4096,
        rate: float = 2000.0,
        unvalidated_rate: float = 50.0,
        max_validated: int = 16384,
        max_challenges: int = 1024,
        max_held: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.factor = factor
        self.credit_cap = credit_cap
        self.rate = rate
        self.unvalidated_rate = unvalidated_rate
        self.max_validated = max_validated
        self.max_challenges = max_challenges
        self.max_held = max_held
        self._clock = clock
        # Plain dicts (half the memory of OrderedDicts; a node keeps one entry per
        # address it talks to), bounded by dropping the oldest entry first.
        self._validated: dict[Address, bytes] = {}
        self._credit: dict[Address, float] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._unvalidated_buckets: dict[str, _Bucket] = {}
        self.challenges: dict[Address, Challenge] = {}
        self.validations = 0

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

    # -- challenges -------------------------------------------------------------------
    def hold(self, contact: Contact, request: Message | None) -> Hold:
        """Challenge ``contact``'s address, holding ``request`` (if any) until it is proven."""
        key = (contact.host, contact.port)
        challenge = self.challenges.get(key)
        if challenge is None:
            if len(self.challenges) >= self.max_challenges:
                return Hold.FULL
            challenge = self.challenges[key] = Challenge(contact.node_id)
            if request is not None:
                challenge.held.append(request)
            return Hold.CHALLENGE
        if request is None:
            return Hold.WAITING
        if challenge.node_id != contact.node_id or len(challenge.held) >= self.max_held:
            return Hold.FULL
        challenge.held.append(request)
        return Hold.WAITING

    def settle(self, address: Address) -> Challenge | None:
        """End the challenge of ``address``: it, with the requests it held, or None."""
        return self.challenges.pop(address, None)

    def __repr__(self) -> str:
        return (f"<Admission validated={len(self._validated)} "
                f"challenges={len(self.challenges)} credit_hosts={len(self._credit)}>")


def _bound(entries: dict[Any, Any], limit: int) -> None:
    """Drop the oldest entries of ``entries`` beyond ``limit``."""
    while len(entries) > limit:
        del entries[next(iter(entries))]
