"""``RouterConformance``: the behaviour every :class:`~spegel_core.protocols.Router` shares.

Subclass it in a test module and provide one fixture::

    class TestMyRouter(RouterConformance):
        @pytest.fixture
        async def conformance_routers(self):
            # Three or more started routers that can reach each other, each with the
            # Peer (mirror host and port) the others should see for it.
            ...
            yield [(router_a, peer_a), (router_b, peer_b), (router_c, peer_c)]
            ...close them...

``settle`` (seconds) is how long advertising or withdrawing may take to be seen.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from spegel_core.protocols import Peer, Router, RouterStatus

Routers = list[tuple[Router, Peer]]


async def collect(router: Router, key: str, count: int = 3, within: float = 1.0) -> list[Peer]:
    """Every peer ``router.lookup`` yields for ``key`` within ``within`` seconds."""
    found = []
    lookup: AsyncIterator[Peer] = router.lookup(key, count, within)
    async for peer in lookup:
        found.append(peer)
    return found


async def eventually_found(router: Router, key: str, expected: Peer, settle: float) -> list[Peer]:
    """Look ``key`` up until ``expected`` is among the providers or ``settle`` seconds pass.

    :returns: the providers of the last lookup (the caller asserts on them).
    """
    deadline = time.monotonic() + settle
    while True:
        found = await collect(router, key)
        if any((p.host, p.port) == (expected.host, expected.port) for p in found):
            return found
        if time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


class RouterConformance:
    """Tests every :class:`~spegel_core.protocols.Router` must pass (see the module docstring)."""

    settle: float = 3.0

    def key(self) -> str:
        """A fresh tag key, so that tests never see each other's advertisements."""
        return f"docker.io/library/conformance:{uuid.uuid4().hex[:12]}"

    async def test_status(self, conformance_routers: Routers) -> None:
        """Each router reports a status with a node id and a peer count, and has a name."""
        for router, _ in conformance_routers:
            status = router.status()
            assert isinstance(status, RouterStatus)
            assert status.node_id and isinstance(status.peers, int) and status.peers >= 0
            assert isinstance(router.name, str) and router.name

    async def test_advertised_key_is_found_by_others(self, conformance_routers: Routers) -> None:
        """A key one router advertises is found by every other router."""
        (a, peer_a), *others = conformance_routers
        key = self.key()
        await a.advertise([key])
        for router, _ in others:
            found = await eventually_found(router, key, peer_a, self.settle)
            assert any((p.host, p.port) == (peer_a.host, peer_a.port) for p in found), found

    async def test_digest_keys_work_too(self, conformance_routers: Routers) -> None:
        """A digest key is found, with exactly the advertising router as provider."""
        (a, peer_a), (b, _), *_ = conformance_routers
        key = "sha256:" + uuid.uuid4().hex * 2
        await a.advertise([key])
        found = await eventually_found(b, key, peer_a, self.settle)
        assert [(p.host, p.port) for p in found] == [(peer_a.host, peer_a.port)]

    async def test_lookup_never_yields_the_asking_node(self, conformance_routers: Routers) -> None:
        """A router's lookup never yields itself, even for a key it advertises."""
        (a, peer_a), *_ = conformance_routers
        key = self.key()
        await a.advertise([key])
        found = await collect(a, key, within=0.3)
        assert all((p.host, p.port) != (peer_a.host, peer_a.port) for p in found), found

    async def test_several_providers_and_count(self, conformance_routers: Routers) -> None:
        """Every provider of a key is found, and ``count`` limits how many are yielded."""
        key = self.key()
        *providers, (asker, _) = conformance_routers
        for router, _ in providers:
            await router.advertise([key])
        expected = {(p.host, p.port) for _, p in providers}
        deadline = time.monotonic() + self.settle
        while True:
            found = {(p.host, p.port) for p in await collect(asker, key, count=len(providers))}
            if found == expected or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert found == expected
        assert len(await collect(asker, key, count=1)) == 1

    async def test_unknown_key_ends_within_the_timeout(self, conformance_routers: Routers) -> None:
        """A lookup of an unknown key yields nothing and ends near its timeout."""
        (a, _), *_ = conformance_routers
        started = time.monotonic()
        assert await collect(a, self.key(), within=0.3) == []
        assert time.monotonic() - started < 0.3 + 0.5

    async def test_withdrawn_key_disappears(self, conformance_routers: Routers) -> None:
        """A withdrawn key is no longer found by others."""
        (a, peer_a), (b, _), *_ = conformance_routers
        key = self.key()
        await a.advertise([key])
        assert await eventually_found(b, key, peer_a, self.settle)
        await a.withdraw([key])
        deadline = time.monotonic() + self.settle
        while (await collect(b, key, within=0.3)) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        assert await collect(b, key, within=0.3) == []

    @pytest.mark.parametrize("times", [2])
    async def test_aclose_is_idempotent(self, conformance_routers: Routers, times: int) -> None:
        """Closing a router twice does not fail."""
        router, _ = conformance_routers[-1]
        for _ in range(times):
            await router.aclose()
