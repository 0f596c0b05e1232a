from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from spegel_core.protocols import Peer
from spegel_core.testing.fakes import MemoryNetwork, MemoryRouter
from spegel_core.testing.router_conformance import RouterConformance, Routers
from spegel_core.testing.singleflight_conformance import SingleFlightConformance


class TestMemoryRouter(RouterConformance):
    settle = 0.5

    @pytest.fixture
    async def conformance_routers(self) -> AsyncIterator[Routers]:
        network = MemoryNetwork()
        routers: Routers = []
        for i in range(3):
            peer = Peer(f"127.0.0.{i + 2}", 5000)
            router = MemoryRouter(network, peer)
            await router.start()
            routers.append((router, peer))
        yield routers
        for router, _ in routers:
            await router.aclose()


class TestMemoryRouterFlights(SingleFlightConformance):
    @pytest.fixture
    async def conformance_routers(self) -> AsyncIterator[Routers]:
        network = MemoryNetwork()
        routers: Routers = []
        for i in range(3):
            peer = Peer(f"127.0.0.{i + 2}", 5000)
            router = MemoryRouter(network, peer)
            await router.start()
            routers.append((router, peer))
        yield routers
        for router, _ in routers:
            await router.aclose()
