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
import socket
import time
from collections.abc import Awaitable, Callable, Sequence

from spegel_core.protocols import ClaimAnswer, Peer
from spegel_core.rendezvous import ClaimBook
from spegel_kademlia.ids import Contact, distance, key_id
from spegel_kademlia.messages import Body, Claim, ClaimReply, Message, ProviderInfo

log = logging.getLogger(__name__)

__all__ = ["Claimant", "answer_claim", "local_address_towards"]

#: Longest claim TTL a rendezvous grants (a claimant asking more gets this).
MAX_TTL = 60.0
#: Rendezvous nodes tried in turn (closest first) before a claim gives up.
ATTEMPTS = 3
#: Contacts the rendezvous lookup converges on (the closest and a few fallbacks).
CLOSEST = 4
#: Digests whose rendezvous is remembered at most (the oldest is forgotten first).
MAX_REMEMBERED = 4096


@functools.lru_cache(maxsize=1024)
def local_address_towards(host: str) -> str:
    """The local address this host uses to reach ``host`` (a routing decision: no
    packet is sent); ``127.0.0.1`` if there is no route."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 9))
            return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def _info(peer: Peer) -> ProviderInfo:
    return ProviderInfo(peer.node_id, peer.host, peer.port)


def _peer(info: ProviderInfo) -> Peer:
    return Peer(info.host, info.port, info.node_id)


def answer_claim(message: Message, book: ClaimBook, own: Peer, *,
                 now: float) -> ClaimReply | None:
    """The rendezvous' reply to a CLAIM (None for a release, which gets none).

    ``own`` is this node as others reach it: a flight member that is this node has
    an empty host in ``book`` (see :class:`Claimant`); it is filled in here with the
    address this node uses towards the claimant.
    """
    body = message.body
    if not isinstance(body, Claim):
        return None
    requester = Peer(message.source_host, message.mirror_port, message.sender)
    if body.ttl_ms == 0:
        book.release(body.key, requester)
        return None
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
    """Claims digests at their rendezvous for this node.

    Args:
        node_id: this node's id.
        mirror_port: where this node's mirror listens.
        host: the address this node's socket is bound to ("" when unspecified).
        book: this node's own book (used when it is the rendezvous itself).
        closest: an async FIND_NODE lookup of a key id: the contacts that answered,
            closest first; [] when this node knows nobody, None when nobody answered.
        request: send one request body to a contact and await its answer.
        send: send one datagram with no answer (releases).
        clock: monotonic seconds.
    """

    def __init__(self, *, node_id: bytes, mirror_port: int, host: str, book: ClaimBook,
                 closest: Callable[[bytes], Awaitable[list[Contact] | None]],
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

    @property
    def own(self) -> Peer:
        return Peer(self.host, self.mirror_port, self.node_id)

    async def claim(self, digest: str, fanout: int, ttl: float,
                    timeout: float) -> ClaimAnswer | None:  # noqa: ASYNC109
        """Claim ``digest``: at this node when it is the closest, else at the closest
        contacts in turn. None when no rendezvous answered within ``timeout``."""
        deadline = self._clock() + timeout
        kid = key_id(digest)
        candidates: Sequence[Contact | None]
        if digest in self._where:
            candidates = [self._where[digest]]
        else:
            candidates = await self._rendezvous(kid)
        for contact in candidates[:ATTEMPTS]:
            if contact is None:
                self._remember(digest, None)
                return self._local(kid, fanout, ttl)
            left = deadline - self._clock()
            if left <= 0:
                break
            body = Claim(kid, max(1, min(255, fanout)), max(1, int(ttl * 1000)))
            try:
                reply = await self._request(contact, body, left)
            except Exception as exc:
                log.debug("claim of %s at %s failed: %s", digest, contact.host, exc)
                self._where.pop(digest, None)
                continue
            if not isinstance(reply.body, ClaimReply):
                continue
            self._remember(digest, contact)
            answer = reply.body
            return ClaimAnswer(go=answer.go, fetcher=_peer(answer.fetcher),
                               parent=None if answer.parent is None else _peer(answer.parent),
                               depth=answer.depth, ttl=answer.ttl_ms / 1000)
        self._where.pop(digest, None)
        return None

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
        self._where.pop(digest, None)

    def _remember(self, digest: str, contact: Contact | None) -> None:
        self._where.pop(digest, None)
        while len(self._where) >= MAX_REMEMBERED:
            del self._where[next(iter(self._where))]
        self._where[digest] = contact

    async def _rendezvous(self, kid: bytes) -> list[Contact | None]:
        """The closest nodes to ``kid``, this node (None) among them where it belongs;
        nothing when the lookup reached nobody (a node alone is its own rendezvous, but
        a node whose contacts do not answer is not: that would be a second flight)."""
        contacts = await self._closest(kid)
        if contacts is None:
            return []
        own = distance(self.node_id, kid)
        ordered: list[Contact | None] = []
        placed = False
        for contact in contacts:
            if not placed and own < distance(contact.node_id, kid):
                ordered.append(None)
                placed = True
            ordered.append(contact)
        if not placed:
            ordered.append(None)
        return ordered

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
