"""The gate every received message passes before it is answered or trusted.

With :class:`~spegel_kademlia.admission.Admission` (the open DHT):

- a response (matched to one of our requests, so its address answered) validates its
  sender and is added to the routing table;
- a request from a validated address is answered and its sender seen, as before;
- a request from an unvalidated address gets at most 3x the bytes it sent. A PING is
  answered. A FIND_NODE or GET_PROVIDERS from a sender that would take a free place in
  the routing table waits while a PING to its address proves it (that check is due
  anyway before it enters the table), then gets its full answer; from any other sender
  it is answered at once, cut to its credit (the closest few contacts, providers
  first). An ADD_PROVIDER is recorded (under the source address, as always) and acked.
  A sender whose bucket has room after a PING or a cut answer is checked a moment
  later, unless an answer to a request of ours proved it meanwhile (for free);
- answers per source IP are rate-limited (dropped beyond the bucket).

Without an admission (a cluster key authenticates every datagram) every message is
answered and its sender seen, as before.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

from spegel_core.protocols import DroppedDatagram, MetricsSink
from spegel_kademlia.admission import Admission, Hold
from spegel_kademlia.ids import Contact
from spegel_kademlia.messages import (
    Body,
    FindNode,
    GetProviders,
    Message,
    Nodes,
    Ping,
    Pong,
    ProviderInfo,
    Providers,
)
from spegel_kademlia.rpc import RpcEndpoint

log = logging.getLogger(__name__)

_E = TypeVar("_E", Contact, ProviderInfo)


class RequestGate:
    """Decides, for each message the endpoint hands on, what is answered and trusted.

    :param admission: the bookkeeping; None trusts every message (authenticated DHT).
    :param rpc: sends answers and validation PINGs.
    :param answer: the reply to a request (``handlers.answer`` bound to the node's state).
    :param admit: records a contact as seen alive (the router's routing-table path).
    :param admits: whether a contact would take a free place in the routing table.
    :param metrics: receives a ``DroppedDatagram`` for each refused request.
    :param ping_timeout: how long a validation PING waits for its PONG.
    :param admit_delay: how long a sender whose bucket has room waits before it is
        challenged (an answer to our own request may prove it meanwhile).
    """

    def __init__(
        self,
        admission: Admission | None,
        *,
        rpc: RpcEndpoint,
        answer: Callable[[Message], Body | None],
        admit: Callable[[Contact], None],
        admits: Callable[[Contact], bool],
        metrics: MetricsSink,
        ping_timeout: float,
        admit_delay: float,
    ) -> None:
        self.admission = admission
        self._rpc = rpc
        self._answer = answer
        self._admit = admit
        self._admits = admits
        self._metrics = metrics
        self._ping_timeout = ping_timeout
        self._admit_delay = admit_delay
        self._pong_size = rpc.codec.size(Message(Pong(), 0, rpc.node_id, rpc.mirror_port))
        self._ping_size = self._pong_size
        #: Requests refused, by reason; held requests answered after validation.
        self.refused: Counter[str] = Counter()
        self.released = 0
        self._later: set[Contact] = set()

    def on_message(self, message: Message) -> None:
        """Handle one decoded message (a matched response or a request)."""
        contact = Contact(message.sender, message.source_host, message.source_port)
        admission = self.admission
        if admission is None:
            self._admit(contact)
            if not message.is_response:
                self._reply(message)
            return
        if message.is_response:
            admission.validate(contact)
            self._admit(contact)
            return
        validated = admission.is_validated(contact)
        if not admission.allow(contact.host, validated):
            self._refuse("rate_limited")
            return
        if validated:
            self._admit(contact)
            self._reply(message)
            return
        admission.earn(contact.address, self._rpc.codec.size(message))
        body = message.body
        if isinstance(body, Ping):
            self._send_within_credit(message, Pong(), reserve=self._ping_size)
            self._admit_later(contact)
            return
        if isinstance(body, FindNode | GetProviders):
            if self._admits(contact):
                # It would enter the table: the PING that checks its address is sent
                # anyway, so the full answer waits for it (one round trip).
                self._challenge(contact, message)
                return
            # It would not enter the table: no PING; the answer is cut to its credit
            # (the closest few contacts, providers first).
            reply = self._answer(message)
            if reply is not None:
                self._send_within_credit(message, reply, reserve=0)
            return
        # ADD_PROVIDER: recorded under the datagram's source address, as always; its
        # ack (1 byte of payload) is far within the credit. Holding it for a check
        # cost the records of a cluster announcing at once (every node new to every
        # other: the checks timed out under load and the records were lost).
        reply = self._answer(message)
        if reply is not None:
            self._send_within_credit(message, reply, reserve=0)
        self._admit_later(contact)

    # -- answering ------------------------------------------------------------------------
    def _reply(self, message: Message) -> None:
        reply = self._answer(message)
        if reply is not None:
            self._rpc.send((message.source_host, message.source_port), reply,
                           message.request_id)

    def _send_within_credit(self, request: Message, reply: Body, *, reserve: int) -> bool:
        """Send ``reply``, cut to the sender's credit less ``reserve``.

        :returns: False if not even an empty answer fits.
        """
        assert self.admission is not None
        codec = self._rpc.codec
        address = (request.source_host, request.source_port)
        room = int(self.admission.credit(address)) - reserve
        body = _cut(reply, room - codec.overhead)
        if body is None:
            self._refuse("amplification")
            return False
        size = codec.size(Message(body, request.request_id, self._rpc.node_id,
                                  self._rpc.mirror_port))
        if size > room:  # (never: _cut counts entries at their largest)
            self._refuse("amplification")
            return False
        self.admission.spend(address, size)
        self._rpc.send(address, body, request.request_id)
        return True

    def _refuse(self, reason: str) -> None:
        self.refused[reason] += 1
        self._metrics.emit(DroppedDatagram(reason))

    # -- validating -----------------------------------------------------------------------
    def _admit_later(self, contact: Contact) -> None:
        """Challenge ``contact`` after a moment if it would enter the table unproven."""
        if contact in self._later or not self._admits(contact):
            return
        if len(self._later) >= 4 * (self.admission.max_challenges if self.admission else 0):
            return
        self._later.add(contact)
        asyncio.get_running_loop().call_later(self._admit_delay, self._admit_now, contact)

    def _admit_now(self, contact: Contact) -> None:
        self._later.discard(contact)
        admission = self.admission
        if (admission is None or self._rpc.closed or admission.is_validated(contact)
                or not self._admits(contact)):
            return
        self._challenge(contact, None)

    def _challenge(self, contact: Contact, request: Message | None) -> None:
        assert self.admission is not None
        decision = self.admission.hold(contact, request)
        if decision is Hold.FULL:
            self._refuse("unvalidated_full")
            return
        if decision is Hold.WAITING:
            return
        if not self.admission.spend(contact.address, 2 * self._ping_size):  # with its retry
            self.admission.settle(contact.address)
            self._refuse("amplification")
            return
        future = self._rpc.start(contact.address, Ping(), attempt_timeout=self._ping_timeout,
                                 retries=1,
                                 node_id=contact.node_id)
        future.add_done_callback(functools.partial(self._challenged, contact))

    def _challenged(self, contact: Contact, future: asyncio.Future[Message]) -> None:
        assert self.admission is not None
        challenge = self.admission.settle(contact.address)
        if future.cancelled() or future.exception() is not None:
            if challenge is not None and challenge.held:
                self.refused["unvalidated"] += len(challenge.held)
                for _ in challenge.held:
                    self._metrics.emit(DroppedDatagram("unvalidated"))
            return
        # The PONG went through on_message first: the address is validated, the
        # contact seen. Answer what waited, in full.
        if challenge is None:
            return
        for message in challenge.held:
            if message.sender == contact.node_id:
                self.released += 1
                self._reply(message)

    def stats(self) -> dict[str, object]:
        """Counters for the router's status."""
        admission = self.admission
        if admission is None:
            return {"address_validation": False}
        return {"address_validation": True, "validations": admission.validations,
                "challenges": len(admission.challenges), "released": self.released,
                "refused": dict(self.refused)}

    def __repr__(self) -> str:
        return f"<RequestGate {self.admission!r} refused={sum(self.refused.values())}>"


def _entry_bytes(host: str) -> int:
    """Bytes of a contact or provider entry on the wire, at most.

    IPv6 for anything with a colon, as an IPv4-mapped address may be sent as IPv4.
    """
    return 51 if ":" in host else 39


def _cut(body: Body, room: int) -> Body | None:
    """``body`` with the entries that do not fit in ``room`` bytes dropped from the end.

    Closer contacts are dropped before providers; None when not even an empty body fits.
    """
    if isinstance(body, Nodes):
        room -= 1
        if room < 0:
            return None
        contacts = _prefix(body.contacts, room)
        return body if len(contacts) == len(body.contacts) else Nodes(contacts)
    if isinstance(body, Providers):
        room -= 2
        if room < 0:
            return None
        providers = _prefix(body.providers, room)
        room -= sum(_entry_bytes(p.host) for p in providers)
        contacts = _prefix(body.contacts, room)
        if len(providers) == len(body.providers) and len(contacts) == len(body.contacts):
            return body
        return Providers(providers, contacts)
    return body


def _prefix(entries: tuple[_E, ...], room: int) -> tuple[_E, ...]:
    used = 0
    for n, entry in enumerate(entries):
        used += _entry_bytes(entry.host)
        if used > room:
            return entries[:n]
    return entries
