"""``SingleFlightConformance``: what every :class:`~spegel_core.protocols.SingleFlightRouter` does.

Subclass it with the same fixture as :class:`~spegel_core.testing.router_conformance.
RouterConformance` (three or more started routers that reach each other, each with the
``Peer`` the others see for it)::

    class TestMyRouterFlights(SingleFlightConformance):
        @pytest.fixture
        async def conformance_routers(self): ...
"""

from __future__ import annotations

import asyncio
import uuid

from spegel_core.protocols import ClaimAnswer, Peer, SingleFlightRouter
from spegel_core.testing.router_conformance import Routers

__all__ = ["SingleFlightConformance"]

TIMEOUT = 2.0


def _same(a: Peer | None, b: Peer) -> bool:
    return a is not None and (a.host, a.port) == (b.host, b.port)


class SingleFlightConformance:
    """Claims, renewals, fan-out and release as seen from the claimants."""

    def digest(self) -> str:
        """A fresh random digest, so tests never share a flight."""
        return "sha256:" + uuid.uuid4().hex * 2

    @staticmethod
    def flight_routers(routers: Routers) -> list[tuple[SingleFlightRouter, Peer]]:
        """The routers under test, each checked to have the single-flight part."""
        out: list[tuple[SingleFlightRouter, Peer]] = []
        for router, peer in routers:
            assert isinstance(router, SingleFlightRouter), f"{router!r} has no claim()"
            out.append((router, peer))
        return out

    async def claim(self, router: SingleFlightRouter, digest: str,
                    fanout: int = 4) -> ClaimAnswer:
        """Claim ``digest`` through ``router``; fails the test if no rendezvous answered."""
        answer = await router.claim(digest, fanout, 10.0, TIMEOUT)
        assert answer is not None, "no rendezvous answered"
        return answer

    async def test_first_claimant_goes_the_next_waits(self, conformance_routers: Routers) -> None:
        """The first claimant is told go; the next streams from it."""
        (a, peer_a), (b, _), *_ = self.flight_routers(conformance_routers)
        digest = self.digest()
        first = await self.claim(a, digest)
        assert first.go and first.parent is None and first.depth == 0
        second = await self.claim(b, digest)
        assert not second.go
        assert _same(second.fetcher, peer_a) and _same(second.parent, peer_a)
        assert second.depth == 1 and second.ttl > 0

    async def test_claiming_again_renews_with_the_same_answer(
            self, conformance_routers: Routers) -> None:
        """A renewal gets the answer the first claim got."""
        (a, peer_a), (b, _), *_ = self.flight_routers(conformance_routers)
        digest = self.digest()
        assert (await self.claim(a, digest)).go
        await self.claim(b, digest)
        assert (await self.claim(a, digest)).go
        again = await self.claim(b, digest)
        assert not again.go and _same(again.parent, peer_a)

    async def test_fanout_bounds_children(self, conformance_routers: Routers) -> None:
        """No member feeds more than ``fanout`` children."""
        (a, peer_a), (b, peer_b), (c, _), *_ = self.flight_routers(conformance_routers)
        digest = self.digest()
        await self.claim(a, digest, fanout=1)
        await self.claim(b, digest, fanout=1)
        third = await self.claim(c, digest, fanout=1)
        assert _same(third.fetcher, peer_a)
        assert _same(third.parent, peer_b) and third.depth == 2

    async def test_fetcher_release_ends_the_flight(self, conformance_routers: Routers) -> None:
        """When the fetcher releases, the next claimant is told go."""
        (a, _), (b, _), *_ = self.flight_routers(conformance_routers)
        digest = self.digest()
        await self.claim(a, digest)
        await a.release(digest)
        for _ in range(100):  # a release may be a datagram on its way (polled, bounded)
            answer = await self.claim(b, digest)
            if answer.go:
                break
            await b.release(digest)
            await asyncio.sleep(0.01)
        assert answer.go

    async def test_digests_fly_apart(self, conformance_routers: Routers) -> None:
        """Each digest has a flight of its own."""
        (a, _), (b, _), *_ = self.flight_routers(conformance_routers)
        assert (await self.claim(a, self.digest())).go
        assert (await self.claim(b, self.digest())).go
