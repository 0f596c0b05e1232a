"""The penalty rules: whom a failure counts against, and in which order providers come.

- a 404, a digest or a length mismatch, a malformed head: against (peer, key);
- a refused connection, a timeout, a broken stream, a 5xx: against the peer;
- a penalised provider comes last and is still asked when it is the only one left,
  but never as the company of a slow provider (hedging);
- errors are typed at the I/O edge, so counters read the type, not a message.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from spegel_core.errors import (
    PeerBadHeaders,
    PeerConnectError,
    PeerContentError,
    PeerDigestMismatch,
    PeerError,
    PeerLengthMismatch,
    PeerNotFound,
    PeerServerError,
    PeerStreamBroken,
    PeerTimeout,
    PeerUnavailable,
)
from spegel_core.mirror.hedging import hedged
from spegel_core.mirror.peer_checks import status_error, transport_error
from spegel_core.mirror.peers import PeerFetcher, PeerSettings
from spegel_core.mirror.penalties import PenaltyList
from spegel_core.protocols import Peer
from spegel_core.testing.fakes import MemoryNetwork, MemoryRouter, RecordingSink

A, B, C = Peer("127.0.0.1", 1001), Peer("127.0.0.1", 1002), Peer("127.0.0.1", 1003)
KEY, OTHER = "sha256:" + "a" * 64, "sha256:" + "b" * 64


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


CONTENT_FAILURES = [PeerNotFound("HTTP 404"), PeerDigestMismatch("x"),
                    PeerLengthMismatch("x"), PeerBadHeaders("x")]
PEER_FAILURES = [PeerConnectError("refused"), PeerTimeout("slow"),
                 PeerStreamBroken("cut"), PeerServerError("HTTP 503")]


@pytest.mark.parametrize("error", CONTENT_FAILURES, ids=lambda e: type(e).__name__)
def test_content_failures_count_against_the_pair(error: PeerError) -> None:
    penalties = PenaltyList(30.0, clock=Clock())
    assert penalties.add(A, error, KEY) == "content"
    assert penalties.penalised(A, KEY)
    assert not penalties.penalised(A, OTHER) and not penalties.penalised(A)
    assert penalties.peers == {} and set(penalties.contents) == {f"127.0.0.1:1001 {KEY}"}


@pytest.mark.parametrize("error", PEER_FAILURES, ids=lambda e: type(e).__name__)
def test_transport_failures_count_against_the_peer(error: PeerError) -> None:
    penalties = PenaltyList(30.0, clock=Clock())
    assert penalties.add(A, error, KEY) == "peer"
    assert penalties.penalised(A) and penalties.penalised(A, OTHER)
    assert not penalties.penalised(B, KEY)
    assert set(penalties.peers) == {"127.0.0.1:1001"} and penalties.contents == {}


def test_penalties_expire_and_stay_bounded() -> None:
    clock = Clock()
    penalties = PenaltyList(30.0, clock=clock, max_contents=100)
    penalties.add(A, PeerTimeout("x"), KEY)
    penalties.add(B, PeerNotFound("x"), KEY)
    clock.now += 29.0
    assert penalties.penalised(A) and penalties.penalised(B, KEY)
    clock.now += 2.0
    assert not penalties.penalised(A) and not penalties.penalised(B, KEY)
    assert penalties.peers == {} and penalties.contents == {}
    for i in range(100 + 10):
        penalties.add(A, PeerNotFound("x"), f"key-{i}")
    assert len(penalties.contents) == 100
    assert penalties.penalised(A, f"key-{100 + 9}")
    assert not penalties.penalised(A, "key-0")  # the oldest went first


def test_counters_read_the_type() -> None:
    penalties = PenaltyList(30.0, clock=Clock())
    for error in [*CONTENT_FAILURES, *PEER_FAILURES]:
        penalties.add(A, error, KEY)
    assert dict(penalties.counts) == {"status": 2, "digest": 1, "stream": 3, "connect": 2}
    assert dict(penalties.scopes) == {"content": 4, "peer": 4}


async def test_the_io_edge_types_library_errors() -> None:
    assert isinstance(transport_error(ConnectionRefusedError(111, "refused")), PeerConnectError)
    assert isinstance(transport_error(aiohttp.ServerTimeoutError("t")), PeerTimeout)
    assert isinstance(transport_error(TimeoutError()), PeerTimeout)
    assert isinstance(transport_error(aiohttp.ClientPayloadError("cut")), PeerStreamBroken)
    assert isinstance(transport_error(aiohttp.ServerDisconnectedError()), PeerConnectError)
    assert isinstance(transport_error(OSError("reset"), streaming=True), PeerStreamBroken)
    mismatch = PeerLengthMismatch("long")
    assert transport_error(mismatch, streaming=True) is mismatch  # typed already: kept
    assert isinstance(status_error(404, "x"), PeerContentError)
    assert isinstance(status_error(400, "x"), PeerContentError)
    assert isinstance(status_error(503, "x"), PeerUnavailable)


def fetcher(network: MemoryNetwork, **settings: object) -> PeerFetcher:
    router = MemoryRouter(network, Peer("127.0.0.1", 1))
    return PeerFetcher(router, RecordingSink(),
                       PeerSettings(resolve_timeout=0.05, **settings))  # type: ignore[arg-type]


async def providers(peers: PeerFetcher, key: str) -> list[Peer]:
    return [peer async for peer in peers.providers(key)]


async def test_penalised_providers_come_last_never_skipped() -> None:
    network = MemoryNetwork()
    for peer in (A, B, C):
        network.add_provider(KEY, peer)
        network.add_provider(OTHER, peer)
    peers = fetcher(network)
    assert await providers(peers, KEY) == [A, B, C]
    peers.penalise(A, PeerTimeout("slow"), KEY)  # A: every key
    peers.penalise(B, PeerNotFound("HTTP 404"), KEY)  # B: this key only
    assert await providers(peers, KEY) == [C, A, B]  # cached: still all three
    assert await providers(peers, OTHER) == [B, C, A]
    network.remove_provider(KEY, C)
    network.remove_provider(KEY, A)
    solo = fetcher(network)  # nothing cached: the lookup's answer only
    solo.penalise(B, PeerNotFound("HTTP 404"), KEY)
    assert await providers(solo, KEY) == [B]  # the only provider left is still asked


async def test_a_404_does_not_hide_the_providers_other_content() -> None:
    network = MemoryNetwork()
    network.add_provider(KEY, A)
    network.add_provider(OTHER, A)
    peers = fetcher(network)
    asked: list[tuple[Peer, str]] = []

    def attempt_for(key: str, fail: bool):  # type: ignore[no-untyped-def]
        async def attempt(peer: Peer) -> str:
            asked.append((peer, key))
            if fail:
                raise PeerNotFound(f"HTTP 404 for {key}")
            return "ok"
        return attempt

    assert await hedged(peers, KEY, attempt_for(KEY, True)) is None
    assert peers.penalised(A, KEY) and not peers.penalised(A, OTHER)
    assert await hedged(peers, OTHER, attempt_for(OTHER, False)) == ("ok", A)
    # The corrupt one again: A is the only provider, so it is asked again (and fails).
    assert await hedged(peers, KEY, attempt_for(KEY, True)) is None
    assert asked == [(A, KEY), (A, OTHER), (A, KEY)]
    assert peers.penalty_counts == {"status": 2}


async def test_a_penalised_provider_is_never_asked_as_company() -> None:
    network = MemoryNetwork()
    network.add_provider(KEY, A)
    network.add_provider(KEY, B)
    peers = fetcher(network, hedge_after=0.01)
    peers.penalise(B, PeerConnectError("refused"), KEY)
    release = asyncio.Event()
    asked: list[Peer] = []

    async def attempt(peer: Peer) -> Peer:
        asked.append(peer)
        if peer == A:
            await asyncio.wait_for(release.wait(), 5)  # slow: past hedge_after
            raise PeerTimeout("slow")
        return peer

    checks: list[Peer] = []
    penalised = peers.penalised

    def recording(peer: Peer, key: str | None = None) -> bool:
        checks.append(peer)
        return penalised(peer, key)

    peers.penalised = recording  # type: ignore[method-assign]
    task = asyncio.ensure_future(hedged(peers, KEY, attempt))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    # B is checked once as it comes out of providers() (deferred), and once more when
    # A is slow and hedging would have asked it: the moment it is held back.
    while checks.count(B) < 2:
        assert loop.time() < deadline, checks
        await asyncio.sleep(0.01)
    assert asked == [A]  # B was held back while A was in flight
    release.set()
    assert await task == (B, B)  # A failed: then the penalised B is asked, and serves
    assert asked == [A, B]
