"""The Kademlia router passes the single-flight conformance suite over real UDP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from spegel_core.protocols import Peer, PeerAddress
from spegel_core.testing.fakes import StaticListDiscovery
from spegel_core.testing.nodes import free_loopback_ip
from spegel_core.testing.router_conformance import Routers
from spegel_core.testing.singleflight_conformance import SingleFlightConformance
from spegel_kademlia.node import KademliaRouter


async def _routers(count: int, cluster_key: bytes | None = None) -> Routers:
    ips = [free_loopback_ip(5000) for _ in range(count)]
    seed = PeerAddress(ips[0], 5001)
    routers: Routers = []
    for index, ip in enumerate(ips):
        discovery = [] if index == 0 else [StaticListDiscovery([seed])]
        router = KademliaRouter(host=ip, port=5001, mirror_port=5000 + index,
                                discovery=discovery, cluster_key=cluster_key)
        await router.start()
        routers.append((router, Peer(ip, 5000 + index)))
    for _ in range(500):  # bootstrap runs in the background
        if all(r.status().peers >= count - 1 for r, _ in routers):
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the routers did not all find each other within 10 s")
    return routers


class TestKademliaFlights(SingleFlightConformance):
    @pytest.fixture
    async def conformance_routers(self) -> AsyncIterator[Routers]:
        routers = await _routers(4, cluster_key=b"k" * 32)
        yield routers
        for router, _ in routers:
            await router.aclose()


async def test_every_claimant_reaches_the_same_rendezvous() -> None:
    routers = await _routers(6)
    try:
        digest = "sha256:" + "ab" * 32
        answers = await asyncio.gather(*(r.claim(digest, 2, 10.0, 2.0)  # type: ignore[attr-defined]
                                         for r, _ in routers))
        assert all(a is not None for a in answers)
        assert sum(a.go for a in answers) == 1
        fetchers = {(a.fetcher.host, a.fetcher.port) for a in answers}
        assert len(fetchers) == 1
        assert max(a.depth for a in answers) <= 3
        holders = [r for r, _ in routers if r.flights()]  # type: ignore[attr-defined]
        assert len(holders) == 1
    finally:
        for router, _ in routers:
            await router.aclose()
