"""The gate every received message passes before it is answered or trusted.

With :class:`~spegel_kademlia.admission.Admission` (the open DHT):

- a response (matched to one of our requests, so its address answered) validates its
  sender and is added to the routing table; if it carries a cookie (the answerer wants
  to validate us), the cookie goes back in an ECHO;
- a request from a validated address is answered and its sender seen, as before;
- an ECHO whose cookie is right validates its sender, which is then seen (it enters the
  routing table); a wrong one is dropped. ECHOs are not rate-limited: none is answered,
  and each needs a cookie from an answer, which was;
- a request from an unvalidated address is answered at once, with at most 3x the bytes
  it sent: in full when it came padded (honest nodes pad the requests whose answers are
  large), else cut to its credit (the closest few contacts, providers first). An
  ADD_PROVIDER is recorded (under the source address, as always) and acked. The answer
  carries a cookie when the sender would take a free place in the routing table;
- answers per source IP are rate-limited (dropped beyond the bucket).

A validation costs one datagram (the ECHO), and no state while it is awaited: the
cookie is recomputed from the secret when it comes back.

Without an admission (a cluster key authenticates every datagram) every message is
answered and its sender seen, as before.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

from spegel_core.protocols import DroppedDatagram, MetricsSink
from spegel_kademlia.admission import Admission
from spegel_kademlia.ids import Contact
from spegel_kademlia.messages import (
    Body,
    Echo,
    Message,
    Nodes,
    ProviderInfo,
    Providers,
)
from spegel_kademlia.payloads import entry_size
from spegel_kademlia.rpc import RpcEndpoint

log = logging.getLogger(__name__)

_E = TypeVar("_E", Contact, ProviderInfo)


class RequestGate:
    """Decides, for each message the endpoint hands on, what is answered and trusted.

    :param admission: the bookkeeping; None trusts every message (authenticated DHT).
    :param rpc: sends answers and ECHOs.
    :param answer: the reply to a request (``handlers.answer`` bound to the node's state).
    :param admit: records a contact as seen alive (the router's routing-table path).
    :param admits: whether a contact would take a free place in the routing table.
    :param metrics: receives a ``DroppedDatagram`` for each refused request.
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
    ) -> None:
        self.admission = admission
        self._rpc = rpc
        self._answer = answer
        self._admit = admit
        self._admits = admits
        self._metrics = metrics
        #: Requests refused, by reason; ECHOs sent and taken.
        self.refused: Counter[str] = Counter()
        self.echoes_sent = 0
        self.echoes_taken = 0

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
            if message.cookie:
                # The answerer validates us: one datagram back, not answered.
                self.echoes_sent += 1
                self._rpc.send(contact.address, Echo(), message.request_id,
                               cookie=message.cookie)
            return
        validated = admission.is_validated(contact)
        if isinstance(message.body, Echo):
            # Not rate-limited: it is never answered, and each one needs a cookie that
            # went out in an answer, which was.
            if validated or admission.check_cookie(contact, message.cookie):
                self.echoes_taken += not validated
                self._admit(contact)
            else:
                self._refuse("bad_cookie")
            return
        if not admission.allow(contact.host, validated):
            self._refuse("rate_limited")
            return
        if validated:
            self._admit(contact)
            self._reply(message)
            return
        admission.earn(contact.address, message.size or self._rpc.codec.size(message))
        reply = self._answer(message)
        if reply is None:
            return
        cookie = admission.cookie(contact) if self._admits(contact) else b""
        self._send_within_credit(message, reply, cookie)

    # -- answering ------------------------------------------------------------------------
    def _reply(self, message: Message) -> None:
        reply = self._answer(message)
        if reply is not None:
            self._rpc.send((message.source_host, message.source_port), reply,
                           message.request_id)

    def _send_within_credit(self, request: Message, reply: Body, cookie: bytes) -> bool:
        """Send ``reply`` (with ``cookie``), cut to the sender's credit.

        :returns: False if not even an empty answer fits.
        """
        assert self.admission is not None
        codec = self._rpc.codec
        address = (request.source_host, request.source_port)
        room = int(self.admission.credit(address))
        if room >= codec.max_size:
            # Any datagram fits (a padded request earns that much): no sizing needed.
            self.admission.spend(address, self._rpc.send(address, reply, request.request_id,
                                                         cookie=cookie))
            return True
        if cookie and room < codec.overhead + len(cookie):
            cookie = b""  # (a cookie never costs an answer its place)
        body = cut_answer(reply, room - codec.overhead - len(cookie))
        if body is None:
            self._refuse("amplification")
            return False
        size = codec.size(Message(body, request.request_id, self._rpc.node_id,
                                  self._rpc.mirror_port, cookie=cookie))
        if size > room:  # (never: cut_answer counts entries as the codec encodes them)
            self._refuse("amplification")
            return False
        self.admission.spend(address, size)
        self._rpc.send(address, body, request.request_id, cookie=cookie)
        return True

    def _refuse(self, reason: str) -> None:
        self.refused[reason] += 1
        self._metrics.emit(DroppedDatagram(reason))

    def stats(self) -> dict[str, object]:
        """Counters for the router's status."""
        admission = self.admission
        if admission is None:
            return {"address_validation": False}
        return {"address_validation": True, "validations": admission.validations,
                "cookies_sent": admission.cookies_sent, "echoes_sent": self.echoes_sent,
                "echoes_taken": self.echoes_taken, "refused": dict(self.refused)}

    def __repr__(self) -> str:
        return f"<RequestGate {self.admission!r} refused={sum(self.refused.values())}>"


def cut_answer(body: Body, room: int) -> Body | None:
    """``body`` with the entries that do not fit in ``room`` bytes dropped from the end.

    What an unvalidated sender of an unpadded request gets: its answer cut to its credit.
    Closer contacts are dropped before providers.

    :param body: the answer (NODES and PROVIDERS are cut; any other is returned as is).
    :param room: bytes of payload the answer may take (the datagram less its envelope).
    :returns: the cut answer, or None when not even an empty body fits.
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
        room -= sum(entry_size(p) for p in providers)
        contacts = _prefix(body.contacts, room)
        if len(providers) == len(body.providers) and len(contacts) == len(body.contacts):
            return body
        return Providers(providers, contacts)
    return body


def _prefix(entries: tuple[_E, ...], room: int) -> tuple[_E, ...]:
    used = 0
    for n, entry in enumerate(entries):
        used += entry_size(entry)
        if used > room:
            return entries[:n]
    return entries
