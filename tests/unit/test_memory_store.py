"""The in-memory fake store passes the ContentStore conformance suite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from spegel_core.oci.image_builder import BuiltImage, build_image
from spegel_core.protocols import ContentStore, StoreEvent, StoreEventKind
from spegel_core.testing.conformance import ContentStoreConformance
from spegel_core.testing.fakes import MemoryContentStore


class TestMemoryContentStore(ContentStoreConformance):
    @pytest.fixture
    async def conformance_store(
        self, conformance_image: BuiltImage
    ) -> AsyncIterator[MemoryContentStore]:
        store = MemoryContentStore()
        store.add_built_image(conformance_image)
        await store.start()
        yield store
        await store.aclose()

    async def add_image(self, store: ContentStore, workdir: Path, reference: str,
                        seed: int) -> BuiltImage:
        assert isinstance(store, MemoryContentStore)
        image = build_image(workdir / "extra", reference, seed=seed, layer_sizes=(1000,))
        store.add_built_image(image)
        return image

    async def remove_image(self, store: ContentStore, image: BuiltImage) -> None:
        assert isinstance(store, MemoryContentStore)
        store.remove_image(image.reference)


async def test_retag_publishes_delete_then_create() -> None:
    store = MemoryContentStore()
    await store.start()
    first, second = store.add_blob(b"one"), store.add_blob(b"two")
    store.add_image("docker.io/library/a:v1", first)
    events = store.subscribe()
    store.add_image("docker.io/library/a:v1", second)
    store.remove_blob(first)
    await store.aclose()
    assert [event async for event in events] == [
        StoreEvent(StoreEventKind.IMAGE_DELETED, "docker.io/library/a:v1", first),
        StoreEvent(StoreEventKind.IMAGE_CREATED, "docker.io/library/a:v1", second),
        StoreEvent(StoreEventKind.CONTENT_DELETED, first),
    ]


async def test_set_status_overrides_ready() -> None:
    store = MemoryContentStore()
    assert not store.status().ready
    await store.start()
    assert store.status().ready
    store.set_status(False, "backend down")
    assert store.status().detail == "backend down"
