"""Conformance suite for the optional :class:`~spegel_core.protocols.ArrivingStore` part.

A store that offers content still arriving subclasses :class:`ArrivingStoreConformance`
next to its :class:`~spegel_core.testing.conformance.ContentStoreConformance` tests::

    class TestMyArriving(ArrivingStoreConformance):
        @pytest.fixture
        async def arriving_store(self):
            async with MyStore(...) as store:
                yield store

        async def begin(self, store, data):
            return MyWriter(...)   # append(bytes), commit(), abort()

The writer stands for whatever fills the store (a download in progress): the suite
appends bytes to it and checks that readers follow, that a commit turns it into
ordinary content and that an abort cuts readers short.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Protocol

import pytest

from spegel_core.errors import ArrivingAborted, BlobUnknown
from spegel_core.protocols import (
    ArrivingContent,
    ArrivingStore,
    ContentStore,
    StoreEvent,
    StoreEventKind,
)

__all__ = ["ArrivingStoreConformance", "ArrivingWriter", "follow"]

WITHIN = 10.0


class ArrivingWriter(Protocol):
    """What the suite drives: content that arrives in a store."""

    async def append(self, data: bytes) -> None:
        """Write the next bytes of the content."""

    async def commit(self) -> None:
        """Complete the content: it becomes ordinary content of the store."""

    async def abort(self) -> None:
        """Give the download up: readers are cut short."""


async def follow(content: ArrivingContent, timeout: float = WITHIN) -> bytes:  # noqa: ASYNC109
    """Read arriving content to its end as it lands (raises ``ArrivingAborted``)."""
    out = bytearray()
    while len(out) < content.size:
        available = await content.wait(len(out), timeout)
        out += await content.read(len(out), available - len(out))
    return bytes(out)


async def _event(events: AsyncIterator[StoreEvent], kind: StoreEventKind, key: str) -> None:
    async with asyncio.timeout(WITHIN):
        async for event in events:
            if event.kind is kind and event.key == key:
                return
    raise AssertionError("event stream ended")


def _payload(size: int = 3 * 1024 * 1024 + 17) -> tuple[bytes, str]:
    data = hashlib.shake_256(b"arriving conformance").digest(size)
    return data, f"sha256:{hashlib.sha256(data).hexdigest()}"


class ArrivingStoreConformance:
    """Tests every store with the optional ``ArrivingStore`` part must pass.

    Contract for subclasses: the ``arriving_store`` fixture (a started store) and
    :meth:`begin`, which makes ``data`` start arriving in it.
    """

    async def begin(self, store: ContentStore, data: bytes) -> ArrivingWriter:
        """Make ``data`` start arriving in ``store``; the returned writer adds the bytes."""
        raise NotImplementedError

    async def test_is_an_arriving_store(self, arriving_store: ContentStore) -> None:
        """The store satisfies the ``ArrivingStore`` protocol."""
        assert isinstance(arriving_store, ArrivingStore)

    async def test_unknown_digest_is_not_arriving(self, arriving_store: ContentStore) -> None:
        """Opening a digest that is not arriving raises :class:`BlobUnknown`."""
        assert isinstance(arriving_store, ArrivingStore)
        with pytest.raises(BlobUnknown):
            await arriving_store.open_arriving("sha256:" + "0" * 64)

    async def test_arriving_content_is_announced_and_listed(
        self, arriving_store: ContentStore
    ) -> None:
        """Content that starts arriving emits ``CONTENT_ARRIVING`` and is listed."""
        assert isinstance(arriving_store, ArrivingStore)
        data, digest = _payload()
        events = arriving_store.subscribe()
        writer = await self.begin(arriving_store, data)
        await _event(events, StoreEventKind.CONTENT_ARRIVING, digest)
        assert digest in await arriving_store.list_arriving()
        await writer.abort()

    async def test_a_reader_follows_the_content_through_its_commit(
        self, arriving_store: ContentStore
    ) -> None:
        """A reader gets every byte as it lands and through the commit."""
        assert isinstance(arriving_store, ArrivingStore)
        data, digest = _payload()
        events = arriving_store.subscribe()
        writer = await self.begin(arriving_store, data)
        half = len(data) // 2
        await writer.append(data[:half])
        await _event(events, StoreEventKind.CONTENT_ARRIVING, digest)
        content = await arriving_store.open_arriving(digest)
        try:
            assert content.digest == digest and content.size == len(data)
            reading = asyncio.ensure_future(follow(content))
            await writer.append(data[half:])
            await writer.commit()
            assert await asyncio.wait_for(reading, WITHIN) == data
        finally:
            await content.aclose()
            await content.aclose()  # twice is fine
        await _event(events, StoreEventKind.CONTENT_CREATED, digest)
        assert digest not in await arriving_store.list_arriving()
        try:  # committed: no longer arriving, or still offered whole for a moment
            late = await arriving_store.open_arriving(digest)
        except BlobUnknown:
            return
        try:
            assert await follow(late) == data
        finally:
            await late.aclose()

    async def test_an_abort_cuts_readers_short(self, arriving_store: ContentStore) -> None:
        """An abort raises :class:`ArrivingAborted` in readers and emits ``ARRIVING_ENDED``."""
        assert isinstance(arriving_store, ArrivingStore)
        data, digest = _payload()
        events = arriving_store.subscribe()
        writer = await self.begin(arriving_store, data)
        await writer.append(data[:1000])
        await _event(events, StoreEventKind.CONTENT_ARRIVING, digest)
        content = await arriving_store.open_arriving(digest)
        try:
            assert await content.wait(0, WITHIN) >= 1
            reading = asyncio.ensure_future(follow(content))
            await writer.abort()
            with pytest.raises(ArrivingAborted):
                await asyncio.wait_for(reading, WITHIN)
        finally:
            await content.aclose()
        await _event(events, StoreEventKind.ARRIVING_ENDED, digest)
        assert digest not in await arriving_store.list_arriving()

    async def test_a_reader_gives_up_when_nothing_arrives(
        self, arriving_store: ContentStore
    ) -> None:
        """A reader's wait raises :class:`ArrivingAborted` when no byte lands in time."""
        assert isinstance(arriving_store, ArrivingStore)
        data, digest = _payload()
        events = arriving_store.subscribe()
        writer = await self.begin(arriving_store, data)
        await writer.append(data[:10])
        await _event(events, StoreEventKind.CONTENT_ARRIVING, digest)
        content = await arriving_store.open_arriving(digest)
        try:
            assert await content.wait(0, WITHIN) == 10
            with pytest.raises(ArrivingAborted):
                await content.wait(10, 0.2)
        finally:
            await content.aclose()
            await writer.abort()
