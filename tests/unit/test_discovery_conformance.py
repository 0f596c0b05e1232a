"""The DiscoveryConformance suite run against the in-memory fake, and shown to catch faults."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from spegel_core.protocols import PeerAddress
from spegel_core.testing.discovery_conformance import DiscoveryConformance
from spegel_core.testing.fakes import StaticListDiscovery

PEERS = [PeerAddress("127.0.0.2", 5001), PeerAddress("::1", 5001)]


class TestStaticListDiscovery(DiscoveryConformance):
    @pytest.fixture
    def expected_peers(self) -> set[PeerAddress]:
        return set(PEERS)

    @pytest.fixture
    def own_peer(self) -> PeerAddress | None:
        return None

    @pytest.fixture
    async def conformance_discovery(self) -> AsyncIterator[StaticListDiscovery]:
        source = StaticListDiscovery(PEERS)
        yield source
        await source.aclose()

    @pytest.fixture
    async def unreachable_discovery(self) -> AsyncIterator[StaticListDiscovery]:
        source = StaticListDiscovery([])
        yield source
        await source.aclose()


class _Leaky(StaticListDiscovery):
    async def bootstrap_peers(self) -> list[PeerAddress]:
        return [*PEERS, PeerAddress("127.0.0.9", 5001)]


class _Raising(StaticListDiscovery):
    async def bootstrap_peers(self) -> list[PeerAddress]:
        raise OSError("source down")


async def test_suite_catches_own_address() -> None:
    suite = DiscoveryConformance()
    with pytest.raises(AssertionError):
        await suite.test_never_returns_own_address(_Leaky(), PeerAddress("127.0.0.9", 5001))
    with pytest.raises(AssertionError):
        await suite.test_finds_some_expected_peers(_Leaky(), set(PEERS))


async def test_suite_catches_raising_when_unreachable() -> None:
    with pytest.raises(OSError):
        await DiscoveryConformance().test_unreachable_source_returns_empty(_Raising())


async def test_suite_catches_wrong_types() -> None:
    class Bad(StaticListDiscovery):
        async def bootstrap_peers(self) -> list[PeerAddress]:
            return [("127.0.0.2", 5001)]  # type: ignore[list-item]

    with pytest.raises(AssertionError):
        await DiscoveryConformance().test_returns_peer_addresses(Bad())
    with pytest.raises(AssertionError):
        await DiscoveryConformance().test_name_and_refresh_interval(
            StaticListDiscovery(refresh_interval=0))
