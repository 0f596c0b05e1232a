from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from spegel_core.config import SpegelConfig
from spegel_core.oci.digest import compute_digest
from spegel_core.oci.image_builder import BuiltImage, build_image
from spegel_core.protocols import AdvertisedKeys, Peer, StoreEvent, StoreEventKind
from spegel_core.state import StateTracker
from spegel_core.testing.fakes import MemoryContentStore, MemoryNetwork, MemoryRouter, RecordingSink
from spegel_core.testing.waiting import eventually as _until


@pytest.fixture
def image(tmp_path: Path) -> BuiltImage:
    return build_image(tmp_path / "l", "docker.io/library/demo:v1", layer_sizes=(100, 200))


async def _tracked(config: SpegelConfig, store: MemoryContentStore
                   ) -> tuple[StateTracker, MemoryRouter, asyncio.Task[None], RecordingSink]:
    router = MemoryRouter(MemoryNetwork(), Peer("127.0.0.2", 5000))
    sink = RecordingSink()
    tracker = StateTracker(config, store, router, sink)
    task = asyncio.create_task(tracker.run())
    await asyncio.wait_for(tracker.synced.wait(), 10)
    return tracker, router, task, sink


async def test_advertises_every_digest_and_tag(make_config: Callable[..., SpegelConfig],
                                               image: BuiltImage) -> None:
    store = MemoryContentStore()
    store.add_built_image(image)
    _tracker, router, task, sink = await _tracked(make_config(), store)
    assert router.advertised == {*image.blobs, "docker.io/library/demo:v1"}
    last = {(e.kind, e.registry): e.count for e in sink.of_type(AdvertisedKeys)}
    assert last == {("tag", "docker.io"): 1, ("digest", "docker.io"): 1,
                    ("content", ""): len(image.blobs)}
    task.cancel()


async def test_advertised_counts_follow_events_down_to_zero(
        make_config: Callable[..., SpegelConfig], image: BuiltImage) -> None:
    store = MemoryContentStore()
    _tracker, _router, task, sink = await _tracked(make_config(), store)

    def last() -> dict[tuple[str, str], int]:
        return {(e.kind, e.registry): e.count for e in sink.of_type(AdvertisedKeys)}

    store.add_built_image(image)
    store.add_image("ghcr.io/org/demo:v1", image.index_digest)
    await _until(lambda: last().get(("digest", "ghcr.io")) == 1)
    assert last()[("tag", "ghcr.io")] == 1 and last()[("digest", "docker.io")] == 1
    assert last()[("content", "")] == len(image.blobs)
    store.remove_image("ghcr.io/org/demo:v1")
    await _until(lambda: last().get(("tag", "ghcr.io")) == 0)
    assert last()[("digest", "ghcr.io")] == 0  # a registry with nothing left reports 0
    assert last()[("digest", "docker.io")] == 1
    task.cancel()


async def test_filters_and_resolve_tags(make_config: Callable[..., SpegelConfig],
                                        image: BuiltImage) -> None:
    store = MemoryContentStore()
    store.add_built_image(image)
    store.add_image("docker.io/library/demo:latest", image.index_digest)
    _, router, task, _ = await _tracked(make_config(registry_filters=":latest$"), store)
    assert "docker.io/library/demo:v1" in router.advertised
    assert "docker.io/library/demo:latest" not in router.advertised
    task.cancel()
    _, router, task, _ = await _tracked(make_config(resolve_tags="false"), store)
    assert router.advertised == set(image.blobs)
    task.cancel()


async def test_events_add_and_withdraw_after_checking(make_config: Callable[..., SpegelConfig],
                                                      image: BuiltImage) -> None:
    store = MemoryContentStore()
    _tracker, router, task, _ = await _tracked(make_config(), store)
    assert router.advertised == set()
    store.add_built_image(image)
    await _until(lambda: "docker.io/library/demo:v1" in router.advertised)
    await _until(lambda: set(image.blobs) <= router.advertised)
    # A delete event for content that is still there withdraws nothing.
    store.publish(StoreEvent(StoreEventKind.CONTENT_DELETED, image.layer_digests[0]))
    store.publish(StoreEvent(StoreEventKind.IMAGE_DELETED, "docker.io/library/demo:v1"))
    # Events are handled in order: once a later one took effect, the deletes were handled.
    probe = b"probe"
    store.blobs[compute_digest(probe)] = probe
    store.publish(StoreEvent(StoreEventKind.CONTENT_CREATED, compute_digest(probe)))
    await _until(lambda: compute_digest(probe) in router.advertised)
    assert image.layer_digests[0] in router.advertised
    assert "docker.io/library/demo:v1" in router.advertised
    store.remove_image("docker.io/library/demo:v1")
    store.remove_blob(image.layer_digests[0])
    await _until(lambda: "docker.io/library/demo:v1" not in router.advertised)
    await _until(lambda: image.layer_digests[0] not in router.advertised)
    task.cancel()


async def test_resync_lists_again(make_config: Callable[..., SpegelConfig],
                                  image: BuiltImage) -> None:
    store = MemoryContentStore()
    _tracker, router, task, _ = await _tracked(make_config(), store)
    # Content that appeared without events (a store that lost its event stream).
    for digest in image.blobs:
        store.blobs[digest] = image.blob_path(digest).read_bytes()
    store.publish(StoreEvent(StoreEventKind.RESYNC))
    await _until(lambda: set(image.blobs) <= router.advertised)
    task.cancel()


async def test_a_store_that_cannot_list_does_not_kill_the_tracker(
        make_config: Callable[..., SpegelConfig], image: BuiltImage) -> None:
    store = MemoryContentStore()
    calls = 0
    original = store.list_images

    async def flaky() -> list:  # type: ignore[type-arg]
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("backend down")
        return await original()

    store.list_images = flaky  # type: ignore[method-assign]
    router = MemoryRouter(MemoryNetwork(), Peer("127.0.0.2", 5000))
    tracker = StateTracker(make_config(), store, router, RecordingSink())
    task = asyncio.create_task(tracker.run())
    await _until(lambda: calls >= 1)  # the first listing failed...
    assert not task.done()  # ...and the tracker carries on (it advertises below)
    store.add_built_image(image)
    store.publish(StoreEvent(StoreEventKind.RESYNC))
    await _until(lambda: "docker.io/library/demo:v1" in router.advertised)
    task.cancel()


async def test_registry_filters_keep_a_filtered_images_content_unadvertised(
        make_config: Callable[..., SpegelConfig], image: BuiltImage, tmp_path: Path) -> None:
    """At sync and as events arrive: a filtered image's tag and its own digests are
    withdrawn, what an unfiltered image also references stays."""
    private = build_image(tmp_path / "private", "docker.io/private/app:v1",
                          layer_sizes=(4000,), seed=9)
    store = MemoryContentStore()
    store.add_built_image(image)
    config = make_config(registry_filters=[r"^docker\.io/private/"])
    _tracker, router, task, _sink = await _tracked(config, store)
    assert router.advertised == {*image.blobs, "docker.io/library/demo:v1"}
    # The private image arrives: its blobs come first (advertised as plain content),
    # then its tag, whose filter withdraws them.
    store.add_built_image(private)
    await _until(lambda: not (router.advertised & set(private.blobs))
                 and len(router.advertised) == len(image.blobs) + 1)
    assert "docker.io/private/app:v1" not in router.advertised
    # The same content under an unfiltered name is advertised again at the next sync.
    store.add_image("docker.io/library/copy:v1", private.index_digest)
    store.publish(StoreEvent(StoreEventKind.RESYNC))
    await _until(lambda: set(private.blobs) <= router.advertised)
    assert "docker.io/library/copy:v1" in router.advertised
    task.cancel()
