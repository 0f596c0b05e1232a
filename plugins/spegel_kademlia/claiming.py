"""The router's single-flight half: claims it makes, and claims it answers.

A mixin of :class:`~spegel_kademlia.node.KademliaRouter` (the router sets the
attributes), implementing :class:`spegel_core.protocols.SingleFlightRouter`; the
protocol itself is in :mod:`spegel_kademlia.claims`.
"""

from __future__ import annotations

import functools
import secrets
import time

from spegel_core.protocols import ClaimAnswer, Peer
from spegel_core.rendezvous import ClaimBook
from spegel_kademlia.claims import CLOSEST, Claimant, answer_claim, attempts
from spegel_kademlia.ids import Contact, distance
from spegel_kademlia.messages import Body, Claim, Message
from spegel_kademlia.rpc import RpcEndpoint
from spegel_kademlia.settings import KademliaSettings
from spegel_kademlia.table import RoutingTable


class Claiming:
    """Claims made and answered (a mixin: the router sets the attributes)."""

    settings: KademliaSettings
    node_id: bytes
    mirror_port: int
    table: RoutingTable
    _rpc: RpcEndpoint
    _state: str
    #: The flights this node holds as a rendezvous.
    claim_book: ClaimBook
    _claimant: Claimant

    def _make_claimant(self, host: str) -> None:
        self.claim_book = ClaimBook()
        self._claimant = Claimant(
            node_id=self.node_id, mirror_port=self.mirror_port, host=host,
            book=self.claim_book, closest=self._closest_for_claim,
            request=self._claim_request, send=self._claim_send)

    # -- SingleFlightRouter API (spegel_core.protocols) -----------------------------------
    async def claim(self, digest: str, fanout: int, ttl: float,
                    timeout: float) -> ClaimAnswer | None:  # noqa: ASYNC109
        """Claim ``digest`` at its rendezvous (:mod:`spegel_kademlia.claims`).

        :param digest: the blob's digest.
        :param fanout: most children a parent may feed.
        :param ttl: seconds the claim lives unless renewed.
        :param timeout: seconds to wait for the answer.
        :returns: the answer, or None when not running or no rendezvous answered.
        """
        if self._state != "running":
            return None
        return await self._claimant.claim(digest, fanout, ttl, timeout)

    async def release(self, digest: str) -> None:
        """Leave the flight of ``digest`` (best effort).

        :param digest: the blob's digest.
        """
        if self._state == "running":
            self._claimant.release(digest)

    def flights(self) -> list[dict[str, object]]:
        """The flights this node holds as a rendezvous.

        :returns: one dict per flight (for the debug page).
        """
        return self.claim_book.snapshot(time.monotonic())

    # -- claims answered and made -----------------------------------------------------------
    def _answer_claim(self, message: Message, body: Claim) -> Body | None:
        own = Peer(self._claimant.host, self.mirror_port, self.node_id)
        return answer_claim(message, self.claim_book, own, now=time.monotonic(),
                            closer=functools.partial(self._closer_than_me, body.key))

    def _closer_than_me(self, kid: bytes) -> list[Contact]:
        mine = distance(self.node_id, kid)
        return [c for c in self.table.closest(kid, CLOSEST) if distance(c.node_id, kid) < mine]

    def _closest_for_claim(self, kid: bytes) -> list[Contact]:
        # Twice what a redirect carries: the first hop has fallbacks when one is slow.
        return self.table.closest(kid, 2 * CLOSEST)

    async def _claim_request(self, contact: Contact, body: Body,
                             timeout: float) -> Message:  # noqa: ASYNC109
        # A rendezvous that a whole fleet claims at once answers late rather than never:
        # wait for it (re-sending less often each time) and never count it as failed here.
        first, retries = attempts(timeout, max(self.settings.kademlia_rpc_timeout,
                                               min(0.25, timeout / 4)))
        return await self._rpc.request(contact.address, body, attempt_timeout=first,
                                       retries=retries, node_id=contact.node_id, backoff=2.0)

    def _claim_send(self, contact: Contact, body: Body) -> None:
        self._rpc.send(contact.address, body, secrets.randbits(64))
