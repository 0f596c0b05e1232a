"""The OCI-layout store against real layout directories on disk."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from spegel_core.errors import BlobUnknown, DigestInvalid, ManifestUnknown
from spegel_core.oci.image_builder import BuiltImage, build_image, remove_image
from spegel_core.oci.mediatypes import OCI_INDEX
from spegel_core.oci.reference import Reference
from spegel_core.protocols import ContentStore, StoreConnection, StoreEvent, StoreEventKind
from spegel_core.testing.conformance import ContentStoreConformance, read_all
from spegel_core.testing.fakes import RecordingSink
from spegel_oci_layout import store as store_module
from spegel_oci_layout.store import OCILayoutStore

POLL = 0.05
SMALL = (512, 2048)


class TestOCILayoutStore(ContentStoreConformance):
    @pytest.fixture
    async def conformance_store(
        self, conformance_image: BuiltImage
    ) -> AsyncIterator[OCILayoutStore]:
        async with OCILayoutStore(conformance_image.layout_dir, poll_interval=POLL) as store:
            yield store

    async def add_image(self, store: ContentStore, workdir: Path, reference: str,
                        seed: int) -> BuiltImage:
        assert isinstance(store, OCILayoutStore)
        return build_image(store.root, reference, seed=seed, layer_sizes=SMALL)

    async def remove_image(self, store: ContentStore, image: BuiltImage) -> None:
        assert isinstance(store, OCILayoutStore)
        assert remove_image(store.root, image.reference)


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    path = tmp_path / "layout"
    path.mkdir()
    return path


@pytest.fixture
async def store(layout: Path) -> AsyncIterator[OCILayoutStore]:
    async with OCILayoutStore(layout, poll_interval=POLL) as opened:
        yield opened


async def collect(events: AsyncIterator[StoreEvent], count: int,
                  within: float = 5.0) -> list[StoreEvent]:
    async with asyncio.timeout(within):
        return [await anext(events) for _ in range(count)]


def write_index(layout: Path, manifests: list[dict[str, object]]) -> None:
    document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    (layout / "index.json").write_text(json.dumps(document))


def descriptor(image: BuiltImage, **annotations: str) -> dict[str, object]:
    return {"mediaType": OCI_INDEX, "digest": image.index_digest,
            "size": image.blobs[image.index_digest], "annotations": annotations}


async def test_empty_layout_is_ready(store: OCILayoutStore) -> None:
    assert store.status().ready
    assert await store.list_images() == []
    assert await store.list_digests() == []
    with pytest.raises(ManifestUnknown):
        await store.resolve(Reference.parse("docker.io/library/demo:v1"))


async def test_media_types_of_every_blob(layout: Path) -> None:
    image = build_image(layout, layer_sizes=SMALL)
    async with OCILayoutStore(layout) as store:
        for digest in image.blobs:
            info = await store.stat(digest)
            assert info.media_type == image.media_types[digest]
            assert info.path == str(layout / "blobs" / "sha256" / digest.removeprefix("sha256:"))


async def test_images_added_and_removed_while_running(layout: Path,
                                                      store: OCILayoutStore) -> None:
    events = store.subscribe()
    image = build_image(layout, layer_sizes=SMALL)
    got = await collect(events, len(image.blobs) + 1)
    assert {e.key for e in got if e.kind is StoreEventKind.CONTENT_CREATED} == set(image.blobs)
    assert got[-1] == StoreEvent(StoreEventKind.IMAGE_CREATED, image.reference,
                                 image.index_digest)

    other = build_image(layout, "docker.io/library/demo:v1", seed=1, layer_sizes=SMALL)
    got = await collect(events, len(set(other.blobs) - set(image.blobs)) + 2)
    kinds = [(e.kind, e.key, e.digest) for e in got if e.kind.name.startswith("IMAGE")]
    assert kinds == [
        (StoreEventKind.IMAGE_DELETED, image.reference, image.index_digest),
        (StoreEventKind.IMAGE_CREATED, image.reference, other.index_digest),
    ]

    remove_image(layout, image.reference)
    assert await collect(events, 1) == [
        StoreEvent(StoreEventKind.IMAGE_DELETED, image.reference, other.index_digest)]
    assert await store.list_images() == []

    # A blob removed from disk is a CONTENT_DELETED event.
    other.blob_path(other.config_digests[0]).unlink()
    assert await collect(events, 1) == [
        StoreEvent(StoreEventKind.CONTENT_DELETED, other.config_digests[0])]


async def test_nested_index(layout: Path) -> None:
    inner_one = build_image(layout, "docker.io/library/one:v1", seed=1, layer_sizes=SMALL)
    inner_two = build_image(layout, "ghcr.io/org/two:v2", seed=2, layer_sizes=SMALL)
    # An index (in blobs/) that lists both images with their own names, tagged itself.
    outer = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        descriptor(inner_one, **{"org.opencontainers.image.ref.name": inner_one.reference}),
        descriptor(inner_two, **{"org.opencontainers.image.ref.name": inner_two.reference}),
    ]}).encode()
    outer_digest = "sha256:" + hashlib.sha256(outer).hexdigest()
    (layout / "blobs" / "sha256" / outer_digest.removeprefix("sha256:")).write_bytes(outer)
    write_index(layout, [{"mediaType": OCI_INDEX, "digest": outer_digest, "size": len(outer),
                          "annotations": {"org.opencontainers.image.ref.name":
                                          "docker.io/library/bundle:all"}}])
    async with OCILayoutStore(layout) as store:
        images = {str(i.reference): i.digest for i in await store.list_images()}
        assert images == {"docker.io/library/bundle:all": outer_digest,
                          inner_one.reference: inner_one.index_digest,
                          inner_two.reference: inner_two.index_digest}
        # Media types are known through both levels of nesting.
        info = await store.stat(inner_two.layer_digests[0])
        assert info.media_type == inner_two.media_types[inner_two.layer_digests[0]]


async def test_tag_only_annotation_is_skipped(layout: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    plain = build_image(layout, "docker.io/library/x:v0", seed=1, layer_sizes=SMALL)
    named = build_image(layout, "docker.io/library/x:v0", seed=2, layer_sizes=SMALL)
    write_index(layout, [
        descriptor(plain, **{"org.opencontainers.image.ref.name": "v1"}),
        # As `ctr export` writes it: a bare tag, and the full name for containerd.
        descriptor(named, **{"org.opencontainers.image.ref.name": "v2",
                             "io.containerd.image.name": "docker.io/library/named:v2"}),
    ])
    caplog.set_level(logging.DEBUG, logger="spegel_oci_layout")
    async with OCILayoutStore(layout, poll_interval=POLL) as store:
        images = {str(i.reference): i.digest for i in await store.list_images()}
        assert images == {"docker.io/library/named:v2": named.index_digest}
        # A changed index.json is walked again, but the annotation is not logged again.
        with (layout / "index.json").open("a") as file:
            file.write("\n")
        await store.refresh()
    skipped = [r for r in caplog.records if "'v1'" in r.getMessage()]
    assert len(skipped) == 1 and skipped[0].levelno == logging.DEBUG


async def test_corrupt_index_keeps_previous_state(layout: Path, store: OCILayoutStore,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    image = build_image(layout, layer_sizes=SMALL)
    await store.refresh()
    events = store.subscribe()
    good = (layout / "index.json").read_bytes()
    (layout / "index.json").write_text('{"schemaVersion": 2, "manifests": [{"dig')
    for _ in range(5):  # what the poller does every interval: would log each time if it could
        await store.refresh()
    assert store.status().ready
    assert "not valid JSON" in store.status().detail
    assert await store.resolve(Reference.parse(image.reference)) == image.index_digest
    warnings = [r for r in caplog.records if "not valid JSON" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not at every poll
    # Repaired: the poller carries on, and nothing was reported deleted meanwhile.
    (layout / "index.json").write_bytes(good)
    other = build_image(layout, "docker.io/library/later:v1", seed=3, layer_sizes=SMALL)
    got = await collect(events, len(set(other.blobs) - set(image.blobs)) + 1)
    assert got[-1].kind is StoreEventKind.IMAGE_CREATED
    assert all(e.kind is not StoreEventKind.IMAGE_DELETED for e in got)
    assert store.status().detail == ""


async def test_vanished_directory_is_not_ready(layout: Path) -> None:
    sink = RecordingSink()
    build_image(layout, layer_sizes=SMALL)
    async with OCILayoutStore(layout, poll_interval=POLL, metrics=sink) as store:
        await store.refresh()
        assert sink.of_type(StoreConnection) == []  # the node reports the first state
        shutil.rmtree(layout)
        await store.refresh()
        await store.refresh()
        status = store.status()
        assert not status.ready and str(layout) in status.detail
        assert sink.of_type(StoreConnection) == [StoreConnection(False)]  # once per change
        await asyncio.to_thread(layout.mkdir)
        await store.refresh()
        assert store.status().ready
        assert sink.of_type(StoreConnection) == [StoreConnection(False), StoreConnection(True)]


@pytest.mark.parametrize("digest", [
    "sha256:../../etc/passwd",
    "sha256:../../../../../../../../../../../../../../../../../../../../../../etc/passwd",
    "sha512:../" + "a" * 125,
    "../../etc/passwd",
])
async def test_path_traversal_is_refused(store: OCILayoutStore, layout: Path, digest: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def no_path(*args: object) -> None:
        raise AssertionError("a path was built from an invalid digest")

    monkeypatch.setattr(store_module, "blob_path", no_path)
    with pytest.raises(DigestInvalid):
        await store.stat(digest)
    with pytest.raises(DigestInvalid):
        await read_all(store, digest)


async def test_non_file_blob_is_unknown(layout: Path, store: OCILayoutStore) -> None:
    digest = "sha256:" + "1" * 64
    (layout / "blobs" / "sha256" / ("1" * 64)).mkdir(parents=True)
    with pytest.raises(BlobUnknown):
        await store.stat(digest)
    with pytest.raises(BlobUnknown):
        await read_all(store, digest)
    assert digest not in await store.list_digests()


async def test_stray_files_are_not_digests(layout: Path, store: OCILayoutStore) -> None:
    image = build_image(layout, layer_sizes=SMALL)
    blobs = layout / "blobs" / "sha256"
    (blobs / ".tmp-partial").write_bytes(b"x")
    (blobs / "NOT-A-DIGEST").write_bytes(b"x")
    assert await store.list_digests() == sorted(image.blobs)


async def test_lifecycle_and_repr(layout: Path) -> None:
    store = OCILayoutStore(layout, poll_interval=POLL)
    assert not store.status().ready and "not started" in store.status().detail
    await store.start()
    await store.start()
    assert "running" in repr(store) and str(layout) in repr(store)
    await store.aclose()
    await store.aclose()
    assert not store.status().ready and "closed" in repr(store)
    events = store.subscribe()
    assert [event async for event in events] == []
    with pytest.raises(ValueError):
        OCILayoutStore(layout, poll_interval=0)
