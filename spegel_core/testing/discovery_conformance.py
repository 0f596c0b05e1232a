"""Conformance suite for :class:`~spegel_core.protocols.Discovery` implementations.

Every discovery plugin (built-in or third-party) subclasses
:class:`DiscoveryConformance` in a test module and provides four fixtures::

    from spegel_core.testing.discovery_conformance import DiscoveryConformance

    class TestMyDiscovery(DiscoveryConformance):
        @pytest.fixture
        def expected_peers(self):
            return {PeerAddress("127.0.0.2", 5001), PeerAddress("127.0.0.3", 5001)}

        @pytest.fixture
        def own_peer(self):
            return PeerAddress("127.0.0.9", 5001)   # in the source, but this node

        @pytest.fixture
        async def conformance_discovery(self, expected_peers, own_peer):
            source = ...                            # lists expected_peers and own_peer
            discovery = MyDiscovery(source, own=own_peer)
            yield discovery
            await discovery.aclose()

        @pytest.fixture
        async def unreachable_discovery(self):
            discovery = MyDiscovery(<a source that cannot be reached>)
            yield discovery
            await discovery.aclose()

``own_peer`` may be None when the discovery has no notion of its own address.
A discovery may return a sample (a subset) of ``expected_peers``, but at least
one of them. The tests are async (pytest-asyncio, ``asyncio_mode = "auto"``).
"""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar

from spegel_core.protocols import Discovery, PeerAddress

__all__ = ["DiscoveryConformance"]


class DiscoveryConformance:
    """Tests every :class:`~spegel_core.protocols.Discovery` must pass."""

    #: How many calls the repeatability tests make.
    repeat: ClassVar[int] = 5
    #: Seconds an unreachable source may take before answering ``[]``.
    unreachable_within: ClassVar[float] = 5.0

    # -- shape -------------------------------------------------------------------------
    async def test_satisfies_the_protocol(self, conformance_discovery: Discovery) -> None:
        """The discovery satisfies the protocol."""
        assert isinstance(conformance_discovery, Discovery)

    async def test_name_and_refresh_interval(self, conformance_discovery: Discovery) -> None:
        """It has a name and a positive refresh interval in seconds."""
        assert isinstance(conformance_discovery.name, str) and conformance_discovery.name
        interval = conformance_discovery.refresh_interval
        assert isinstance(interval, int | float) and not isinstance(interval, bool)
        assert interval > 0

    async def test_repr_does_not_fail(self, conformance_discovery: Discovery) -> None:
        """``repr`` works."""
        assert repr(conformance_discovery)

    # -- answers -----------------------------------------------------------------------
    async def test_returns_peer_addresses(self, conformance_discovery: Discovery) -> None:
        """It returns a list of :class:`PeerAddress` with a host (no brackets) and a valid port."""
        peers = await conformance_discovery.bootstrap_peers()
        assert isinstance(peers, list)
        for peer in peers:
            assert isinstance(peer, PeerAddress), peer
            assert isinstance(peer.host, str) and peer.host
            assert isinstance(peer.port, int) and 0 < peer.port < 65536
            assert not peer.host.startswith("["), "IPv6 hosts carry no brackets"

    async def test_finds_some_expected_peers(self, conformance_discovery: Discovery,
                                             expected_peers: set[PeerAddress]) -> None:
        """A reachable source yields at least one peer, and only expected ones."""
        peers = await conformance_discovery.bootstrap_peers()
        assert peers, "a reachable source that lists peers returned none"
        assert set(peers) <= expected_peers, f"unexpected: {set(peers) - expected_peers}"

    async def test_no_duplicates(self, conformance_discovery: Discovery) -> None:
        """No peer is returned twice in one answer."""
        peers = await conformance_discovery.bootstrap_peers()
        assert len(peers) == len(set(peers))

    async def test_never_returns_own_address(self, conformance_discovery: Discovery,
                                             own_peer: PeerAddress | None) -> None:
        """The node's own address is never among the peers."""
        if own_peer is None:
            return
        for _ in range(self.repeat):
            assert own_peer not in await conformance_discovery.bootstrap_peers()

    async def test_repeatable(self, conformance_discovery: Discovery,
                              expected_peers: set[PeerAddress]) -> None:
        """Repeated calls keep answering with expected peers."""
        for _ in range(self.repeat):
            peers = await conformance_discovery.bootstrap_peers()
            assert peers and set(peers) <= expected_peers

    async def test_concurrent_calls(self, conformance_discovery: Discovery,
                                    expected_peers: set[PeerAddress]) -> None:
        """Concurrent calls all answer with expected peers."""
        results = await asyncio.gather(
            *(conformance_discovery.bootstrap_peers() for _ in range(self.repeat)))
        for peers in results:
            assert peers and set(peers) <= expected_peers

    async def test_result_is_a_fresh_list(self, conformance_discovery: Discovery) -> None:
        """Each call returns a new list that the caller may change."""
        first = await conformance_discovery.bootstrap_peers()
        first.clear()
        assert await conformance_discovery.bootstrap_peers(), "the caller's list is its own"

    # -- failure and closing -----------------------------------------------------------
    async def test_unreachable_source_returns_empty(self,
                                                    unreachable_discovery: Discovery) -> None:
        """An unreachable source answers ``[]`` (never raises) within ``unreachable_within``."""
        started = time.monotonic()
        for _ in range(2):
            peers = await unreachable_discovery.bootstrap_peers()  # must not raise
            assert peers == []
        assert time.monotonic() - started < 2 * self.unreachable_within

    async def test_aclose_is_idempotent(self, conformance_discovery: Discovery) -> None:
        """Closing twice after use does not fail."""
        await conformance_discovery.bootstrap_peers()
        await conformance_discovery.aclose()
        await conformance_discovery.aclose()

    async def test_aclose_without_use(self, unreachable_discovery: Discovery) -> None:
        """Closing twice without any call does not fail."""
        await unreachable_discovery.aclose()
        await unreachable_discovery.aclose()
