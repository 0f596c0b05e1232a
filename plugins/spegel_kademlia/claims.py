"""Single flight over the DHT: claims sent to a digest's rendezvous, and answered there.

The rendezvous of a digest is the node closest to its key id: the node that holds its
provider records already, found by the same FIND_NODE lookup (a node may be its own
rendezvous). It keeps a :class:`~spegel_core.rendezvous.ClaimBook` and answers CLAIM
datagrams, authenticated like every other datagram by the codec. The claimant's
address is the datagram's source address, never a payload field.

:func:`answer_claim` is the pure answering side; :class:`Claimant` is the asking side
(it needs a few callables of the router: the closest contacts, one request, the own
id), and both are wired into :class:`~spegel_kademlia.node.KademliaRouter` with one
dispatch branch.
"""

from __future__ import annotations

import functools
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable, Sequence

from spegel_core.protocols import ClaimAnswer, Peer
from spegel_core.rendezvous import ClaimBook
from spegel_kademlia.ids import Contact, distance, key_id
from spegel_kademlia.messages import Body, Claim, ClaimReply, Message, Nodes, ProviderInfo

log = logging.getLogger(__name__)

__all__ = ["Claimant", "answer_claim", "attempts", "local_address_towards"]

#: Longest claim TTL a rendezvous grants (a claimant asking more gets this).
MAX_TTL = 60.0
#: Closer contacts a node returns instead of answering a claim (and a claimant starts with).
CLOSEST = 4
#: Most nodes one claim visits before it gives up.
MAX_HOPS = 8
#: Digests whose rendezvous is remembered at most (the oldest is forgotten first).
MAX_REMEMBERED = 4096
#: Seconds a lookup's closest answering nodes stay a hint for a claim of the same key.
HINT_TTL = 30.0


@functools.lru_cache(maxsize=1024)
def local_address_towards(host: str) -> str:
    """The local address this host uses to reach ``host``.

    A routing decision: no packet is sent. ``127.0.0.1`` if there is no route.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 9))
            return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def attempts(timeout: float, shortest: float) -> tuple[float, int]:
    """How one claim hop waits: the first attempt's timeout, and the retries after it.

    Each retry waits twice as long as the attempt before it, and the attempts fill
    ``timeout`` exactly. A rendezvous that a whole fleet claims at once answers late
    rather than never: re-sending at a fixed pace would send it more claims the
    slower it gets (the re-sends of 2000 claims every 0.5 s were twice the claims
    themselves in an overloaded run). A lost datagram is re-sent after ``shortest``
    at the earliest.

    :param timeout: seconds the hop may take.
    :param shortest: the shortest first attempt (seconds, > 0).
    :returns: ``(first attempt timeout, retries)``.
    """
    shortest = max(1e-3, shortest)
    if timeout <= shortest:
        return max(timeout, 1e-3), 0
    count = max(1, int(math.log2(timeout / shortest + 1)))
    return timeout / (2 ** count - 1), count - 1


def _info(peer: Peer) -> ProviderInfo:
    return ProviderInfo(peer.node_id, peer.host, peer.port)


def _peer(info: ProviderInfo) -> Peer:
    return Peer(info.host, info.port, info.node_id)


def answer_claim(message: Message, book: ClaimBook, own: Peer, *, now: float,
                 closer: Sequence[Contact] | Callable[[], Sequence[Contact]] = ()
                 ) -> ClaimReply | Nodes | None:
    """The reply to a CLAIM (None for a release, which gets none).

    ``closer`` are the contacts this node knows closer to the key than itself (or a
    callable that finds them, called only when needed): unless it holds the key's
    flight already, it sends the claim on to them (NODES) rather than answer it. A
    rendezvous that holds the flight answers a fleet's claims without looking at its
    routing table. ``own`` is this node as others reach it: a flight member that is
    this node has an empty host in ``book`` (see :class:`Claimant`); it is filled in
    with the address this node uses towards the claimant.
    """
    body = message.body
    if not isinstance(body, Claim):
        return None
    requester = Peer(message.source_host, message.mirror_port, message.sender)
    if body.ttl_ms == 0:
        book.release(body.key, requester)
        return None
    if not book.holds(body.key, now):
        onward = closer() if callable(closer) else closer
        if onward:
            return Nodes(tuple(onward))
    ttl = min(MAX_TTL, body.ttl_ms / 1000)
    answer = book.claim(body.key, requester, fanout=body.fanout, ttl=ttl, now=now)
    here = local_address_towards(message.source_host) if not own.host else own.host

    def placed(peer: Peer) -> ProviderInfo:
        if not peer.host:
            return ProviderInfo(peer.node_id, here, peer.port)
        return _info(peer)

    return ClaimReply(answer.go, min(255, answer.depth), int(ttl * 1000),
                      placed(answer.fetcher),
                      None if answer.parent is None else placed(answer.parent))


class Claimant:
    """Claims digests at their rendezvous for this node, routing each claim there.

    A claim goes to the closest contact this node knows; a node that knows a contact
    closer to the key than itself, and holds no flight of it, answers with those
    contacts (NODES) and the claim hops on, one query per hop, until a node that knows
    none closer answers it. That costs a few datagrams where a FIND_NODE lookup costs
    dozens, which matters when a whole fleet claims in the same second. A node that
    knows no contact closer than itself is its own rendezvous. Renewals go straight to
    the node that answered.

    The mirror looks a digest's providers up before it claims it, and that lookup ends
    at the nodes closest to the key, the rendezvous among them: the router passes them
    to :meth:`hint`, and a claim of the same key in the next :data:`HINT_TTL` seconds
    goes to them first, so it takes one hop instead of two or three.

    :param node_id: this node's id.
    :param mirror_port: where this node's mirror listens.
    :param host: the address this node's socket is bound to ("" when unspecified).
    :param book: this node's own book (used when it is the rendezvous itself).
    :param closest: the contacts of the routing table closest to a key id, closest first.
    :param request: send one request body to a contact and await its answer.
    :param send: send one datagram with no answer (releases).
    :param clock: monotonic seconds.
    """

    def __init__(self, *, node_id: bytes, mirror_port: int, host: str, book: ClaimBook,
                 closest: Callable[[bytes], Sequence[Contact]],
                 request: Callable[[Contact, Body, float], Awaitable[Message]],
                 send: Callable[[Contact, Body], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.node_id = node_id
        self.mirror_port = mirror_port
        self.host = host
        self.book = book
        self._closest = closest
        self._request = request
        self._send = send
        self._clock = clock
        #: Where each digest's claim went last (renewals go to the same node).
        self._where: dict[str, Contact | None] = {}
        #: Hops of the claims routed so far (for status and tests).
        self.hops = 0
        #: Per key id: when a lookup ended, and its closest answering contacts.
        self._hints: dict[bytes, tuple[float, tuple[Contact, ...]]] = {}

    def hint(self, kid: bytes, closest: Sequence[Contact]) -> None:
        """Remember the closest contacts a lookup of ``kid`` heard from, closest first.

        :param kid: the key id looked up.
        :param closest: contacts that answered the lookup, closest first (the first
            :data:`CLOSEST` are kept).
        """
        if not closest:
            return
        self._hints.pop(kid, None)
        while len(self._hints) >= MAX_REMEMBERED:
            del self._hints[next(iter(self._hints))]
        self._hints[kid] = (self._clock(), tuple(closest[:CLOSEST]))

    def _hinted(self, kid: bytes) -> tuple[Contact, ...]:
        hint = self._hints.get(kid)
        if hint is None:
            return ()
        if self._clock() - hint[0] > HINT_TTL:
            del self._hints[kid]
            return ()
        return hint[1]

    @property
    def own(self) -> Peer:
        """This node as a peer (its mirror)."""
        return Peer(self.host, self.mirror_port, self.node_id)

    async def claim(self, digest: str, fanout: int, ttl: float,
                    timeout: float) -> ClaimAnswer | None:  # noqa: ASYNC109
        """Claim ``digest`` at its rendezvous; None when none answered within ``timeout``."""
        deadline = self._clock() + timeout
        kid = key_id(digest)
        body = Claim(kid, max(1, min(255, fanout)), max(1, int(ttl * 1000)))
        if digest in self._where:  # a renewal: straight to the node that answered
            known = self._where[digest]
            if known is None:
                return self._local(kid, fanout, ttl)
            reply = await self._ask(known, body, deadline)
            if isinstance(reply, ClaimReply):
                return self._answer(digest, known, reply)
            self._where.pop(digest, None)  # gone or moved: route afresh
        own = distance(self.node_id, kid)
        union = {c.node_id: c for c in (*self._hinted(kid), *self._closest(kid))}
        candidates = sorted((c for c in union.values() if distance(c.node_id, kid) < own),
                            key=lambda c: distance(c.node_id, kid))
        if not candidates:
            self._remember(digest, None)
            return self._local(kid, fanout, ttl)
        asked: set[bytes] = {self.node_id}
        hops = 0
        while candidates and hops < MAX_HOPS and self._clock() < deadline:
            contact = candidates.pop(0)
            if contact.node_id in asked:
                continue
            asked.add(contact.node_id)
            hops += 1
            reply = await self._ask(contact, body, deadline)
            if isinstance(reply, ClaimReply):
                self.hops += hops
                return self._answer(digest, contact, reply)
            if reply is None:
                continue  # no answer: the next closest known
            here = distance(contact.node_id, kid)
            shown = sorted((c for c in reply if distance(c.node_id, kid) < here),
                           key=lambda c: distance(c.node_id, kid))
            if shown and own <= distance(shown[0].node_id, kid):
                self._remember(digest, None)  # sent back here: this node is the closest
                return self._local(kid, fanout, ttl)
            candidates = [c for c in shown if c.node_id not in asked] + candidates
        return None

    async def _ask(self, contact: Contact, body: Claim,
                   deadline: float) -> ClaimReply | list[Contact] | None:
        """One hop: the claim's answer, the closer contacts it was sent on to, or None."""
        left = deadline - self._clock()
        if left <= 0:
            return None
        try:  # half the time left at most: a dead hop leaves time for the next one
            reply = await self._request(contact, body, min(left, max(0.5, left / 2)))
        except Exception as exc:
            log.debug("claim at %s failed: %s", contact.host, exc)
            return None
        if isinstance(reply.body, ClaimReply):
            return reply.body
        if isinstance(reply.body, Nodes):
            return list(reply.body.contacts)
        return None

    def _answer(self, digest: str, contact: Contact, reply: ClaimReply) -> ClaimAnswer:
        self._remember(digest, contact)
        return ClaimAnswer(go=reply.go, fetcher=_peer(reply.fetcher),
                           parent=None if reply.parent is None else _peer(reply.parent),
                           depth=reply.depth, ttl=reply.ttl_ms / 1000)

    def release(self, digest: str) -> None:
        """Leave the flight of ``digest`` (a datagram with no answer, or the own book)."""
        kid = key_id(digest)
        if digest not in self._where:
            return
        contact = self._where.pop(digest)
        if contact is None:
            self.book.release(kid, self.own)
        else:
            self._send(contact, Claim(kid, 1, 0))

    def forget(self, digest: str) -> None:
        """Forget which rendezvous answered for ``digest``."""
        self._where.pop(digest, None)

    def _remember(self, digest: str, contact: Contact | None) -> None:
        self._where.pop(digest, None)
        while len(self._where) >= MAX_REMEMBERED:
            del self._where[next(iter(self._where))]
        self._where[digest] = contact

    def _local(self, kid: bytes, fanout: int, ttl: float) -> ClaimAnswer:
        own = Peer("", self.mirror_port, self.node_id)
        answer = self.book.claim(kid, own, fanout=fanout, ttl=min(MAX_TTL, ttl),
                                 now=self._clock())
        # Members that are this node have no host in the book (others name it by the
        # address they reach it at); to itself it is its bound address, if any.
        def named(peer: Peer) -> Peer:
            return peer if peer.host else Peer(self.host, peer.port, peer.node_id)

        parent = None if answer.parent is None else named(answer.parent)
        return ClaimAnswer(go=answer.go, fetcher=named(answer.fetcher), parent=parent,
                           depth=answer.depth, ttl=answer.ttl)
