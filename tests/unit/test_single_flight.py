"""The mirror's single flight with in-memory fakes: claims, the fetcher's own
requests, holding a peer's request until bytes arrive, and soft state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from spegel_core.errors import BlobUnknown, ManifestUnknown
from spegel_core.mirror.peers import PeerFetcher, PeerSettings
from spegel_core.mirror.singleflight import SingleFlight
from spegel_core.oci.digest import compute_digest
from spegel_core.protocols import FlightClaim, Peer
from spegel_core.testing.fakes import (
    MemoryArrivingStore,
    MemoryNetwork,
    MemoryRouter,
    RecordingSink,
)

DIGEST = "sha256:" + "ab" * 32


class Node:
    def __init__(self, network: MemoryNetwork, index: int) -> None:
        self.peer = Peer(f"127.0.9.{index}", 5000)
        self.router = MemoryRouter(network, self.peer)
        self.store = MemoryArrivingStore()
        self.sink = RecordingSink()
        self.peers = PeerFetcher(self.router, self.sink, PeerSettings(resolve_timeout=0.01))
        self.flight = SingleFlight(self.router, self.store, self.peers, self.sink, wait=0.5)


@pytest.fixture
async def nodes() -> AsyncIterator[list[Node]]:
    network = MemoryNetwork()
    made = [Node(network, i + 2) for i in range(3)]
    yield made
    for node in made:
        await node.peers.aclose()


async def test_the_first_claimant_is_told_go_and_answers_404(nodes: list[Node]) -> None:
    a = nodes[0]
    with pytest.raises(BlobUnknown, match="upstream"):
        await a.flight.fetch("docker.io", "x", DIGEST, None, client="127.0.0.1")
    assert a.flight.claims[DIGEST].role == "go"
    assert [e.role for e in a.sink.of_type(FlightClaim)] == ["go"]


async def test_the_fetcher_never_waits_on_itself(nodes: list[Node]) -> None:
    a, b, _ = nodes
    with pytest.raises(BlobUnknown):
        await a.flight.fetch("docker.io", "x", DIGEST, None, client="127.0.0.1")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(BlobUnknown, match="itself"):  # a's containerd asks b next
        await b.flight.fetch("docker.io", "x", DIGEST, None, client=a.peer.host)
    assert loop.time() - started < b.flight.wait  # at once, not after the wait
    assert DIGEST not in b.flight.claims
    assert [e.role for e in b.sink.of_type(FlightClaim)] == ["self"]
    flight = b.router.network.claims.flights[DIGEST.encode()]
    assert len(flight.members) == 1  # b did not join the tree for a's request


async def test_no_rendezvous_means_404_as_without_single_flight(nodes: list[Node]) -> None:
    a = nodes[0]
    a.router.network.rendezvous_down = True
    with pytest.raises(BlobUnknown, match="not found on any peer"):
        await a.flight.fetch("docker.io", "x", DIGEST, None, client="127.0.0.1")
    assert not a.flight.claims


async def test_a_waiter_whose_parent_never_has_bytes_answers_404_within_the_wait(
        nodes: list[Node]) -> None:
    a, b, _ = nodes
    with pytest.raises(BlobUnknown):
        await a.flight.fetch("docker.io", "x", DIGEST, None, client="127.0.0.1")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(BlobUnknown, match="no bytes"):
        await b.flight.fetch("docker.io", "x", DIGEST, None, client="127.0.0.1")
    assert loop.time() - started < b.flight.wait + 2.0  # bounded by the wait (+ slack)
    assert b.flight.claims[DIGEST].role == "wait"
    assert b.flight.counts["timeout"] == 1


async def test_hold_waits_for_the_ingest_and_wakes_on_its_event(nodes: list[Node]) -> None:
    a = nodes[0]
    a.flight.wait = 5.0
    assert not await a.flight.hold(DIGEST, 1.0)  # no claim: nothing to wait for
    with pytest.raises(BlobUnknown):
        await a.flight.fetch("docker.io", "x", DIGEST, None, client="127.0.0.1")
    runner = asyncio.ensure_future(a.flight.run())
    try:
        await asyncio.sleep(0)
        held = asyncio.ensure_future(a.flight.hold(DIGEST, 5.0))
        for _ in range(10):  # loop turns, not time: hold() reaches its wait and stays
            await asyncio.sleep(0)
        assert not held.done()
        a.store.begin_arriving(DIGEST, 10)
        assert await asyncio.wait_for(held, 10.0)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_hold_gives_up_after_its_wait(nodes: list[Node]) -> None:
    a = nodes[0]
    with pytest.raises(BlobUnknown):
        await a.flight.fetch("docker.io", "x", DIGEST, None, client="127.0.0.1")
    assert not await a.flight.hold(DIGEST, 0.2)


async def test_renew_keeps_growing_claims_and_drops_dead_and_committed_ones(
        nodes: list[Node]) -> None:
    a, b, _ = nodes
    clock = [0.0]
    a.flight.clock = lambda: clock[0]
    with pytest.raises(BlobUnknown):
        await a.flight.fetch("docker.io", "x", DIGEST, None, client="127.0.0.1")
    writer = a.store.begin_arriving(DIGEST, 4)
    clock[0] = 10.0
    await a.flight.renew()
    assert a.flight.claims[DIGEST].renewals == 1  # arriving: renewed
    await writer.abort()
    await a.flight.renew()
    assert DIGEST not in a.flight.claims  # gone without a commit: released
    with pytest.raises(BlobUnknown, match="upstream"):  # so the next claimant goes
        await b.flight.fetch("docker.io", "x", DIGEST, None, client="127.0.0.1")
    digest = b.store.add_blob(b"done")
    b.flight.claims[digest] = b.flight.claims[DIGEST]
    await b.flight.renew()
    assert digest not in b.flight.claims  # committed: no claim to keep


# -- manifests by digest -------------------------------------------------------------------
MANIFEST = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}'


async def test_a_manifest_is_claimed_like_a_blob(nodes: list[Node]) -> None:
    a, b, _ = nodes
    digest = compute_digest(MANIFEST)
    with pytest.raises(ManifestUnknown, match="upstream"):
        await a.flight.fetch_manifest("docker.io", "x", digest, client="127.0.0.1")
    assert a.flight.claims[digest].role == "go"
    # The fetcher's own containerd, asking b next, is answered at once.
    with pytest.raises(ManifestUnknown, match="itself"):
        await b.flight.fetch_manifest("docker.io", "x", digest, client=a.peer.host)
    assert digest not in b.flight.claims
    # Another node waits for the tree: nobody serves it here, so a 404 after the wait.
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ManifestUnknown, match="nothing from the tree"):
        await b.flight.fetch_manifest("docker.io", "x", digest, client="127.0.0.1")
    assert loop.time() - started < b.flight.wait + 2.0
    assert b.flight.claims[digest].role == "wait"
    assert [e.role for e in b.sink.of_type(FlightClaim)] == ["self", "wait"]


async def test_a_manifest_with_no_rendezvous_is_a_404(nodes: list[Node]) -> None:
    a = nodes[0]
    a.router.network.rendezvous_down = True
    with pytest.raises(ManifestUnknown, match="not found on any peer"):
        await a.flight.fetch_manifest("docker.io", "x", compute_digest(MANIFEST), client="")
    assert not a.flight.claims


async def test_a_held_manifest_request_waits_for_the_commit_not_the_first_bytes(
        nodes: list[Node]) -> None:
    a = nodes[0]
    a.flight.wait = 5.0
    digest = compute_digest(MANIFEST)
    with pytest.raises(ManifestUnknown):
        await a.flight.fetch_manifest("docker.io", "x", digest, client="127.0.0.1")
    runner = asyncio.ensure_future(a.flight.run())
    try:
        await asyncio.sleep(0)
        held = asyncio.ensure_future(a.flight.hold(digest, 5.0, whole=True))
        writer = a.store.begin_arriving(digest, len(MANIFEST))
        await writer.append(MANIFEST)
        for _ in range(10):  # loop turns, not time: arriving bytes do not release it
            await asyncio.sleep(0)
        assert not held.done()
        await writer.commit()
        assert await asyncio.wait_for(held, 10.0)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
