"""The containerd store against real containerd daemons (one per test, own root and sockets)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from spegel_containerd.checks import startup_checks
from spegel_containerd.store import ContainerdStore
from spegel_core.config import SpegelConfig
from spegel_core.errors import BlobUnknown, ConfigError, NotFound, StoreUnavailable
from spegel_core.oci.image_builder import BuiltImage, build_image
from spegel_core.oci.reference import Reference
from spegel_core.protocols import ContentStore, StoreEvent, StoreEventKind
from spegel_core.testing.conformance import ContentStoreConformance, read_all
from spegel_core.testing.containerd import ContainerdDaemon, import_layout

SMALL = (512, 2048)
REF = "docker.io/library/demo:v1"


def open_store(daemon: ContainerdDaemon, content_path: Path | None = None,
               **kwargs: float) -> ContainerdStore:
    path = daemon.content_path if content_path is None else content_path
    return ContainerdStore(daemon.socket, daemon.namespace, path, gc_delay=0.2,
                           reconnect_max_backoff=kwargs.pop("reconnect_max_backoff", 1.0),
                           **kwargs)


async def import_image(daemon: ContainerdDaemon, image: BuiltImage, *,
                       all_platforms: bool = True) -> None:
    await asyncio.to_thread(import_layout, daemon, image.layout_dir, all_platforms=all_platforms)


async def next_event(events: AsyncIterator[StoreEvent], match: Callable[[StoreEvent], bool],
                     within: float = 30.0) -> StoreEvent:
    async with asyncio.timeout(within):
        async for event in events:
            if match(event):
                return event
    raise AssertionError("event stream ended")


async def wait_for(condition: Callable[[], bool], within: float = 20.0) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not condition():
        if loop.time() - started > within:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.02)
    return loop.time() - started


class TestContainerdStore(ContentStoreConformance):
    @pytest.fixture
    async def conformance_store(
        self, conformance_image: BuiltImage, containerd_daemon: ContainerdDaemon
    ) -> AsyncIterator[ContainerdStore]:
        self.daemon = containerd_daemon
        await import_image(containerd_daemon, conformance_image)
        async with open_store(containerd_daemon) as store:
            yield store

    async def add_image(self, store: ContentStore, workdir: Path, reference: str,
                        seed: int) -> BuiltImage:
        image = build_image(workdir / "extra", reference, seed=seed, layer_sizes=SMALL)
        await import_image(self.daemon, image)
        return image

    async def remove_image(self, store: ContentStore, image: BuiltImage) -> None:
        await asyncio.to_thread(self.daemon.remove_images, image.reference)


@pytest.fixture
def image(tmp_path: Path) -> BuiltImage:
    return build_image(tmp_path / "layout", REF, layer_sizes=SMALL, seed=5)


@pytest.fixture
async def store(containerd_daemon: ContainerdDaemon, image: BuiltImage
                ) -> AsyncIterator[ContainerdStore]:
    await import_image(containerd_daemon, image)
    async with open_store(containerd_daemon) as opened:
        yield opened


async def test_one_platform_imported_other_manifest_is_not_here(
    containerd_daemon: ContainerdDaemon, image: BuiltImage
) -> None:
    await import_image(containerd_daemon, image, all_platforms=False)
    # The import ingests every blob; the unreferenced ones go with the next collection.
    await asyncio.to_thread(containerd_daemon.ctr, "images", "tag", REF, "docker.io/x/gc:now")
    await asyncio.to_thread(containerd_daemon.ctr, "images", "rm", "--sync", "docker.io/x/gc:now")
    async with open_store(containerd_daemon) as store:
        digests = set(await store.list_digests())
        held = [digest for digest in image.manifest_digests if digest in digests]
        missing = [digest for digest in image.manifest_digests if digest not in digests]
        assert len(held) == 1 and len(missing) == 1
        assert image.index_digest in digests
        assert await store.resolve(Reference.parse(REF)) == image.index_digest
        with pytest.raises(NotFound):
            await store.stat(missing[0])
        with pytest.raises(NotFound):
            await read_all(store, missing[0])
        assert (await store.stat(held[0])).size == image.blobs[held[0]]


async def test_mirror_answers_from_containerd(
    containerd_daemon: ContainerdDaemon, image: BuiltImage,
    make_config: Callable[..., SpegelConfig], mirror_client: Callable[..., Any]
) -> None:
    await import_image(containerd_daemon, image, all_platforms=False)
    await asyncio.to_thread(containerd_daemon.ctr, "images", "tag", REF, "docker.io/x/gc:now")
    await asyncio.to_thread(containerd_daemon.ctr, "images", "rm", "--sync", "docker.io/x/gc:now")
    config = make_config(content_store="containerd", router="none",
                         containerd_sock=str(containerd_daemon.socket),
                         containerd_content_path=str(containerd_daemon.content_path))
    async with mirror_client(config) as client:
        assert (await client.get("/readyz")).status_code == 200
        response = await client.head("/v2/library/demo/manifests/v1?ns=docker.io")
        assert response.status_code == 200
        assert response.headers["docker-content-digest"] == image.index_digest
        index = (await client.get(f"/v2/library/demo/manifests/{image.index_digest}")).json()
        found = []
        for entry in index["manifests"]:
            response = await client.get(f"/v2/library/demo/manifests/{entry['digest']}")
            found.append(response.status_code)
            if response.status_code == 404:
                assert response.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        assert sorted(found) == [200, 404]
        held = found.index(200)
        per_platform = len(image.layer_digests) // len(image.manifest_digests)
        for number, layer in enumerate(image.layer_digests):
            response = await client.get(f"/v2/library/demo/blobs/{layer}")
            assert response.status_code == (200 if number // per_platform == held else 404)


async def test_events_announce_content_of_new_images_and_what_gc_removed(
    store: ContainerdStore, containerd_daemon: ContainerdDaemon, image: BuiltImage,
    tmp_path: Path
) -> None:
    events = store.subscribe()
    other = build_image(tmp_path / "other", "docker.io/library/other:v2", layer_sizes=SMALL,
                        seed=9)
    await import_image(containerd_daemon, other)
    created = []
    async with asyncio.timeout(5):
        async for event in events:
            if event.kind is StoreEventKind.IMAGE_CREATED:
                assert event.key == other.reference and event.digest == other.index_digest
                break
            assert event.kind is StoreEventKind.CONTENT_CREATED
            created.append(event.key)
    assert set(created) == set(other.blobs)
    # --sync: collect now (the scheduler alone may wait longer than the test on a
    # loaded machine); the events must still come through the store's subscription.
    await asyncio.to_thread(containerd_daemon.remove_images, other.reference, sync=True)
    deleted = await next_event(events, lambda e: e.kind is StoreEventKind.IMAGE_DELETED)
    assert deleted.key == other.reference and deleted.digest == other.index_digest
    gone: set[str] = set()
    while not set(other.blobs) <= gone:
        event = await next_event(events, lambda e: e.kind is StoreEventKind.CONTENT_DELETED)
        gone.add(event.key)
    # (the archive's own index.json, ingested by the import, may be collected too)
    assert not gone & set(image.blobs)
    assert not gone & set(await store.list_digests())


async def test_image_names_that_are_not_tag_references_are_skipped(
    store: ContainerdStore, containerd_daemon: ContainerdDaemon, image: BuiltImage
) -> None:
    await asyncio.to_thread(containerd_daemon.ctr, "images", "tag", REF,
                            f"docker.io/library/demo@{image.index_digest}")
    await asyncio.to_thread(containerd_daemon.ctr, "images", "tag", REF, "sha256:" + "1" * 64)
    await asyncio.to_thread(containerd_daemon.ctr, "images", "tag", REF,
                            "127.0.0.1:5000/team/app:v3")
    images = {str(item.reference): item.digest for item in await store.list_images()}
    assert images == {REF: image.index_digest,
                      "127.0.0.1:5000/team/app:v3": image.index_digest}
    assert await store.resolve(Reference.parse("127.0.0.1:5000/team/app:v3")) \
        == image.index_digest


async def test_restart_goes_not_ready_then_ready_with_resync(
    store: ContainerdStore, containerd_daemon: ContainerdDaemon, image: BuiltImage
) -> None:
    events = store.subscribe()
    assert store.status().ready
    await asyncio.to_thread(containerd_daemon.stop)
    await wait_for(lambda: not store.status().ready)
    assert store.status().detail.startswith("store disconnected: ")
    with pytest.raises(StoreUnavailable):
        await store.list_images()
    await asyncio.to_thread(containerd_daemon.start)
    await next_event(events, lambda e: e.kind is StoreEventKind.RESYNC)
    assert store.status().ready
    assert [str(i.reference) for i in await store.list_images()] == [REF]


async def test_store_started_before_containerd(
    containerd_daemon: ContainerdDaemon, image: BuiltImage
) -> None:
    await import_image(containerd_daemon, image)
    await asyncio.to_thread(containerd_daemon.stop)
    async with open_store(containerd_daemon) as store:
        assert not store.status().ready
        assert "store disconnected" in store.status().detail
        with pytest.raises(StoreUnavailable):
            await store.stat(image.index_digest)
        events = store.subscribe()
        await asyncio.to_thread(containerd_daemon.start)
        await next_event(events, lambda e: e.kind is StoreEventKind.RESYNC)
        assert store.status().ready
        assert await store.resolve(Reference.parse(REF)) == image.index_digest


async def test_unreadable_content_directory_streams_over_grpc(
    containerd_daemon: ContainerdDaemon, image: BuiltImage, tmp_path: Path,
    caplog: pytest.LogCaptureFixture
) -> None:
    await import_image(containerd_daemon, image)
    caplog.set_level(logging.WARNING, "spegel_containerd")
    async with open_store(containerd_daemon, content_path=tmp_path / "elsewhere") as store:
        for digest, size in image.blobs.items():
            info = await store.stat(digest)
            assert info.path is None and info.size == size
            data = await read_all(store, digest)
            assert hashlib.sha256(data).hexdigest() == digest.partition(":")[2]
        layer = max(image.blobs, key=image.blobs.__getitem__)
        whole = await read_all(store, layer)
        assert await read_all(store, layer, 100, 50) == whole[100:150]
        assert await read_all(store, layer, len(whole) - 3) == whole[-3:]
        assert store.status().ready and "gRPC" in store.status().detail
    warnings = [r for r in caplog.records if "--containerd-content-path" in r.getMessage()]
    assert len(warnings) == 1


async def test_namespaces_are_separate(
    containerd_daemon: ContainerdDaemon, image: BuiltImage
) -> None:
    await asyncio.to_thread(import_layout, containerd_daemon, image.layout_dir,
                            namespaces=["other"])
    async with open_store(containerd_daemon) as store:
        assert await store.list_images() == []
        assert await store.list_digests() == []
        with pytest.raises(BlobUnknown):
            await store.stat(image.index_digest)


def test_startup_checks(containerd_daemon: ContainerdDaemon, tmp_path: Path,
                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "spegel_containerd")
    startup_checks(containerd_daemon.socket, "k8s.io", containerd_daemon.content_path)
    assert "has no images yet" in caplog.text
    caplog.clear()
    startup_checks(tmp_path / "missing.sock", "k8s.io", None)
    assert "no containerd socket" in caplog.text
    not_a_socket = tmp_path / "file"
    not_a_socket.write_text("")
    with pytest.raises(ConfigError, match="is not a socket"):
        startup_checks(not_a_socket, "k8s.io", None)
