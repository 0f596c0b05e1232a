"""Arriving content with the in-memory fakes: the optional store part, the tracker,
the mirror route that serves it to peers, and the order in which providers are tried."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from spegel_core.config import SpegelConfig
from spegel_core.errors import ArrivingAborted
from spegel_core.mirror.arriving import committed_then_arriving
from spegel_core.protocols import (
    AdvertisedKeys,
    ArrivingServed,
    ContentStore,
    Peer,
    StoreEvent,
    StoreEventKind,
    arriving_key,
)
from spegel_core.state import StateTracker
from spegel_core.testing.arriving_conformance import ArrivingStoreConformance, ArrivingWriter
from spegel_core.testing.fakes import (
    MemoryArrivingReader,
    MemoryArrivingStore,
    MemoryContentStore,
    MemoryNetwork,
    MemoryRouter,
    RecordingSink,
)
from spegel_core.testing.waiting import eventually as _until

DATA = hashlib.shake_256(b"layer").digest(3 * 2**20 + 5)
DIGEST = f"sha256:{hashlib.sha256(DATA).hexdigest()}"
MIRRORED = {"X-Spegel-Mirrored": "true"}


class TestMemoryArrivingConformance(ArrivingStoreConformance):
    @pytest.fixture
    async def arriving_store(self) -> AsyncIterator[MemoryArrivingStore]:
        store = MemoryArrivingStore()
        await store.start()
        yield store
        await store.aclose()

    async def begin(self, store: ContentStore, data: bytes) -> ArrivingWriter:
        assert isinstance(store, MemoryArrivingStore)
        return store.begin_arriving(f"sha256:{hashlib.sha256(data).hexdigest()}", len(data))


# -- the order of providers ---------------------------------------------------------------
async def _peers(*items: tuple[float, Peer]) -> AsyncIterator[Peer]:
    for delay, peer in items:
        # When each provider is found is the scenario (timers fire in order of their
        # due time, so a busy machine keeps the order), not a wait.
        await asyncio.sleep(delay)
        yield peer


async def test_committed_providers_come_first_even_when_found_later() -> None:
    a, b, c = (Peer(f"127.0.0.{n}", 5000) for n in (2, 3, 4))
    order = [peer async for peer in committed_then_arriving(
        _peers((0.05, a)), _peers((0.0, b), (0.0, a), (0.01, c)))]
    assert order == [a, b, c]  # a once, although it is both


async def test_arriving_providers_when_nobody_has_it_committed() -> None:
    b = Peer("127.0.0.3", 5000)
    assert [p async for p in committed_then_arriving(_peers(), _peers((0.0, b)))] == [b]


async def test_closing_early_stops_both_lookups() -> None:
    a = Peer("127.0.0.2", 5000)
    forever = asyncio.Event()

    async def endless() -> AsyncIterator[Peer]:
        await forever.wait()
        yield a

    merged = committed_then_arriving(_peers((0.0, a)), endless())
    assert await anext(merged) == a
    await asyncio.wait_for(merged.aclose(), 1)  # type: ignore[attr-defined]


# -- the state tracker --------------------------------------------------------------------
async def _tracker(config: SpegelConfig, store: MemoryContentStore
                   ) -> tuple[MemoryRouter, asyncio.Task[None], RecordingSink]:
    router = MemoryRouter(MemoryNetwork(), Peer("127.0.0.2", 5000))
    sink = RecordingSink()
    tracker = StateTracker(config, store, router, sink)
    task = asyncio.create_task(tracker.run())
    await asyncio.wait_for(tracker.synced.wait(), 10)
    return router, task, sink


async def test_arriving_content_is_advertised_until_committed(
    make_config: Callable[..., SpegelConfig],
) -> None:
    store = MemoryArrivingStore()
    router, task, sink = await _tracker(make_config(), store)
    writer = store.begin_arriving(DIGEST, len(DATA))
    await _until(lambda: arriving_key(DIGEST) in router.advertised)
    assert DIGEST not in router.advertised
    assert AdvertisedKeys("arriving", "", 1) in sink.events
    await writer.append(DATA)
    await writer.commit()
    await _until(lambda: DIGEST in router.advertised
                 and arriving_key(DIGEST) not in router.advertised)
    assert sink.of_type(AdvertisedKeys)[-1] == AdvertisedKeys("arriving", "", 0) or \
        AdvertisedKeys("arriving", "", 0) in sink.events
    task.cancel()


async def test_an_aborted_arrival_is_withdrawn(make_config: Callable[..., SpegelConfig]) -> None:
    store = MemoryArrivingStore()
    router, task, _ = await _tracker(make_config(), store)
    writer = store.begin_arriving(DIGEST, len(DATA))
    await _until(lambda: arriving_key(DIGEST) in router.advertised)
    await writer.abort()
    await _until(lambda: arriving_key(DIGEST) not in router.advertised)
    assert DIGEST not in router.advertised
    task.cancel()


async def test_arriving_content_is_found_by_a_resync(
    make_config: Callable[..., SpegelConfig],
) -> None:
    store = MemoryArrivingStore()
    store.begin_arriving(DIGEST, len(DATA))
    router, task, _ = await _tracker(make_config(), store)
    assert arriving_key(DIGEST) in router.advertised
    store.arriving.clear()  # gone while nobody listened
    store.publish(StoreEvent(StoreEventKind.RESYNC))
    await _until(lambda: arriving_key(DIGEST) not in router.advertised)
    task.cancel()


async def test_advertise_arriving_false_keeps_todays_behaviour(
    make_config: Callable[..., SpegelConfig],
) -> None:
    store = MemoryArrivingStore()
    store.begin_arriving("sha256:" + "1" * 64, 10)
    router, task, sink = await _tracker(make_config(advertise_arriving=False), store)
    writer = store.begin_arriving(DIGEST, len(DATA))
    await writer.append(DATA)
    await writer.commit()
    await _until(lambda: DIGEST in router.advertised)
    assert not [key for key in router.advertised if key.startswith("arriving/")]
    assert not [e for e in sink.of_type(AdvertisedKeys) if e.kind == "arriving"]
    task.cancel()


# -- the mirror route ---------------------------------------------------------------------
@pytest.fixture
async def served(mirror_client: Callable[..., Any], make_config: Callable[..., SpegelConfig],
                 ) -> AsyncIterator[tuple[httpx.AsyncClient, MemoryArrivingStore]]:
    store = MemoryArrivingStore()
    async with mirror_client(make_config(content_store="memory"), store) as client:
        yield client, store


async def test_a_peer_gets_arriving_content_as_it_lands(
    served: tuple[httpx.AsyncClient, MemoryArrivingStore],
) -> None:
    client, store = served
    writer = store.begin_arriving(DIGEST, len(DATA))
    await writer.append(DATA[:1000])

    async def land() -> None:
        for start in range(1000, len(DATA), 2**20):
            await asyncio.sleep(0.01)  # the download trickling in is the scenario, not a wait
            await writer.append(DATA[start:start + 2**20])
        await writer.commit()

    landing = asyncio.ensure_future(land())
    response = await client.get(f"/v2/library/demo/blobs/{DIGEST}", headers=MIRRORED)
    await landing
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(DATA))
    assert response.headers["x-spegel-source"] == "arriving"
    assert response.content == DATA


async def test_a_range_of_arriving_content(
    served: tuple[httpx.AsyncClient, MemoryArrivingStore],
) -> None:
    client, store = served
    writer = store.begin_arriving(DIGEST, len(DATA))
    await writer.append(DATA)
    response = await client.get(f"/v2/library/demo/blobs/{DIGEST}",
                                headers={**MIRRORED, "Range": "bytes=100-199"})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes 100-199/{len(DATA)}"
    assert response.content == DATA[100:200]
    past = await client.get(f"/v2/library/demo/blobs/{DIGEST}",
                            headers={**MIRRORED, "Range": f"bytes={len(DATA)}-"})
    assert past.status_code == 416


async def test_arriving_content_is_only_for_peers(
    served: tuple[httpx.AsyncClient, MemoryArrivingStore],
) -> None:
    client, store = served
    writer = store.begin_arriving(DIGEST, len(DATA))
    await writer.append(DATA)
    # The node's own containerd is the one downloading it: never served back to it.
    assert (await client.get(f"/v2/library/demo/blobs/{DIGEST}")).status_code == 404


async def test_an_abandoned_download_cuts_the_stream(
    served: tuple[httpx.AsyncClient, MemoryArrivingStore],
) -> None:
    client, store = served
    writer = store.begin_arriving(DIGEST, len(DATA))
    await writer.append(DATA[:5000])

    # The download is abandoned once the peer's reader has sent what there was and
    # waits for more (the moment it is cut mid-stream), not after a pause.
    waiting_for_more = asyncio.Event()
    open_arriving = store.open_arriving

    async def opening(digest: str) -> MemoryArrivingReader:
        reader = await open_arriving(digest)
        wait = reader.wait

        async def waiting(offset: int, timeout: float) -> int:  # noqa: ASYNC109
            if offset >= 5000:
                waiting_for_more.set()
            return await wait(offset, timeout)

        reader.wait = waiting  # type: ignore[method-assign]
        return reader

    store.open_arriving = opening  # type: ignore[method-assign]

    async def fail() -> None:
        await asyncio.wait_for(waiting_for_more.wait(), 10)
        await writer.abort()

    failing = asyncio.ensure_future(fail())
    # Never a complete 200: the in-process server re-raises what cut the body (Starlette
    # wraps it: "response already started"); uvicorn with the zero-copy add-on closes the
    # connection instead (tests/e2e/test_arriving_pulls.py).
    with pytest.raises((ArrivingAborted, RuntimeError)):
        await client.get(f"/v2/library/demo/blobs/{DIGEST}", headers=MIRRORED)
    await failing


async def test_served_bytes_are_counted(
    mirror_client: Callable[..., Any], make_config: Callable[..., SpegelConfig],
    register_plugin: Callable[[object, str], None],
) -> None:
    from spegel_core import hookimpl

    sink = RecordingSink()

    class Metrics:
        @hookimpl
        def spegel_register_metrics(self, config: SpegelConfig, registry: Any) -> None:
            registry.add(sink)

    register_plugin(Metrics(), "recording")
    store = MemoryArrivingStore()
    writer = store.begin_arriving(DIGEST, len(DATA))
    await writer.append(DATA)
    async with mirror_client(make_config(content_store="memory"), store) as client:
        response = await client.get(f"/v2/library/demo/blobs/{DIGEST}", headers=MIRRORED)
    assert response.status_code == 200
    assert sink.of_type(ArrivingServed) == [ArrivingServed(len(DATA))]
