"""The Kademlia router passes the router conformance suite over real UDP on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from spegel_core.protocols import Peer, PeerAddress
from spegel_core.testing.fakes import StaticListDiscovery
from spegel_core.testing.nodes import free_loopback_ip
from spegel_core.testing.router_conformance import RouterConformance, Routers
from spegel_kademlia.node import KademliaRouter


class TestKademliaRouter(RouterConformance):
    @pytest.fixture
    async def conformance_routers(self) -> AsyncIterator[Routers]:
        ips = [free_loopback_ip(5000) for _ in range(4)]
        seed = PeerAddress(ips[0], 5001)
        routers: Routers = []
        for index, ip in enumerate(ips):
            discovery = [] if index == 0 else [StaticListDiscovery([seed])]
            router = KademliaRouter(host=ip, port=5001, mirror_port=5000 + index,
                                    discovery=discovery)
            await router.start()
            routers.append((router, Peer(ip, 5000 + index)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not all(r.status().peers >= len(ips) - 1 for r, _ in routers):
            # bootstrap runs in the background
            assert loop.time() < deadline, [r.status().peers for r, _ in routers]
            await asyncio.sleep(0.02)
        yield routers
        for router, _ in routers:
            await router.aclose()
