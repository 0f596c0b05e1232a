"""Conformance suite for :class:`~spegel_core.protocols.ContentStore` implementations.

Every content-store plugin (built-in or third-party) subclasses
:class:`ContentStoreConformance` in a test module and provides one fixture::

    from spegel_core.testing.conformance import ContentStoreConformance

    class TestMyStore(ContentStoreConformance):
        @pytest.fixture
        async def conformance_store(self, conformance_image):
            store = MyStore(...)            # import conformance_image into it
            await store.start()
            yield store
            await store.aclose()

        async def add_image(self, store, workdir, reference, seed):
            image = build_image(workdir / "extra", reference, seed=seed)
            ...                             # import it into the store
            return image

        async def remove_image(self, store, image):
            ...                             # untag image.reference

The tests are async (pytest-asyncio, ``asyncio_mode = "auto"``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import ClassVar

import pytest

from spegel_core.errors import DigestInvalid, NotFound
from spegel_core.oci.image_builder import BuiltImage, build_image
from spegel_core.oci.reference import Reference
from spegel_core.protocols import ContentStore, StoreEvent, StoreEventKind

__all__ = ["ContentStoreConformance", "read_all"]

#: Digests that must be refused before any file system access.
MALFORMED_DIGESTS = (
    "sha256:../../etc/passwd",
    "sha256:" + "../" * 20 + "etc/passwd",
    "sha256:" + "A" * 64,
    "sha256:" + "0" * 63,
    "sha256:" + "0" * 63 + "/",
    "md5:d41d8cd98f00b204e9800998ecf8427e",
    "../index.json",
    "sha256",
    "",
)
ABSENT_DIGEST = "sha256:" + "0" * 64


async def read_all(store: ContentStore, digest: str, offset: int = 0,
                   length: int | None = None) -> bytes:
    """Every byte ``store.read`` yields, joined."""
    return b"".join([chunk async for chunk in store.read(digest, offset, length)])


async def _next_event(events: AsyncIterator[StoreEvent], within: float,
                      match: Callable[[StoreEvent], bool]) -> StoreEvent:
    try:
        async with asyncio.timeout(within):
            async for event in events:
                if match(event):
                    return event
    except TimeoutError:
        pytest.fail(f"no matching store event within {within} s")
    pytest.fail("the event stream ended before the expected event")


class ContentStoreConformance:
    """Tests every :class:`~spegel_core.protocols.ContentStore` must pass.

    Contract for subclasses:

    ``conformance_store`` (fixture, required, may be async)
        Yields a *started* store holding every blob of ``conformance_image`` and
        the tag ``conformance_image.reference`` pointing to its index digest.
        Tear down however the store needs; the suite may already have closed it
        (``aclose`` must be idempotent).
    ``conformance_image`` (fixture, provided)
        A :class:`~spegel_core.oci.image_builder.BuiltImage` (two platforms, a
        small and a 1.5 MiB layer each) written into ``tmp_path / "conformance"``
        as an OCI layout. Override to change it.
    ``supports_events`` (class attribute, default True)
        When True, implement :meth:`add_image` and :meth:`remove_image`; the
        event tests then expect ``IMAGE_CREATED``/``IMAGE_DELETED`` within
        ``event_timeout`` seconds. When False, those tests are skipped.
    ``reports_media_types`` (class attribute, default True)
        When True, ``stat`` must report the media type each blob's descriptor
        declares; when False, ``None`` is accepted (a known type must still match).
    """

    supports_events: ClassVar[bool] = True
    reports_media_types: ClassVar[bool] = True
    event_timeout: ClassVar[float] = 5.0
    extra_reference: ClassVar[str] = "docker.io/library/conformance-extra:v2"

    @pytest.fixture
    def conformance_image(self, tmp_path: Path) -> BuiltImage:
        """The image the store under test must hold: two platforms, a 4 KiB and a 1.5 MiB layer."""
        return build_image(tmp_path / "conformance", "docker.io/library/conformance:v1",
                           layer_sizes=(4096, 1536 * 1024), seed=42)

    async def add_image(self, store: ContentStore, workdir: Path, reference: str,
                        seed: int) -> BuiltImage:
        """Put a new image tagged ``reference`` into ``store`` and return it.

        ``workdir`` is an empty directory the subclass may build in (for example
        ``build_image(workdir / "extra", reference, seed=seed)``); the image
        must differ from ``conformance_image`` (``seed`` makes sure it does).
        """
        raise NotImplementedError("set supports_events = False or implement add_image")

    async def remove_image(self, store: ContentStore, image: BuiltImage) -> None:
        """Remove the tag ``image.reference`` from ``store`` (blobs may stay)."""
        raise NotImplementedError("set supports_events = False or implement remove_image")

    # -- identity and status --------------------------------------------------------
    async def test_is_a_content_store(self, conformance_store: ContentStore) -> None:
        """The store satisfies the protocol and has a name."""
        assert isinstance(conformance_store, ContentStore)
        assert isinstance(conformance_store.name, str) and conformance_store.name

    async def test_status_ready(self, conformance_store: ContentStore) -> None:
        """A started store holding content reports ready."""
        assert conformance_store.status().ready

    async def test_aclose_twice(self, conformance_store: ContentStore) -> None:
        """Closing twice does not fail."""
        await conformance_store.aclose()
        await conformance_store.aclose()

    # -- tags -------------------------------------------------------------------------
    async def test_list_images(self, conformance_store: ContentStore,
                               conformance_image: BuiltImage) -> None:
        """The conformance image is listed under its reference, pointing to its index."""
        images = {str(image.reference): image.digest
                  for image in await conformance_store.list_images()}
        assert images.get(conformance_image.reference) == conformance_image.index_digest

    async def test_resolve_tag(self, conformance_store: ContentStore,
                               conformance_image: BuiltImage) -> None:
        """The tag resolves to the image's index digest."""
        reference = Reference.parse(conformance_image.reference)
        assert await conformance_store.resolve(reference) == conformance_image.index_digest

    @pytest.mark.parametrize("unknown", [
        "docker.io/library/conformance:no-such-tag",
        "docker.io/library/no-such-repository:v1",
        "example.com/library/conformance:v1",
    ])
    async def test_resolve_unknown_tag(self, conformance_store: ContentStore,
                                       unknown: str) -> None:
        """An unknown tag, repository or registry raises :class:`NotFound`."""
        with pytest.raises(NotFound):
            await conformance_store.resolve(Reference.parse(unknown))

    # -- blobs ------------------------------------------------------------------------
    async def test_stat_every_blob(self, conformance_store: ContentStore,
                                   conformance_image: BuiltImage) -> None:
        """``stat`` reports each blob's digest, size, media type and file (if any)."""
        for digest, size in conformance_image.blobs.items():
            info = await conformance_store.stat(digest)
            assert info.digest == digest
            assert info.size == size, digest
            expected = conformance_image.media_types.get(digest)
            if self.reports_media_types or info.media_type is not None:
                assert info.media_type == expected, digest
            if info.path is not None:
                assert await asyncio.to_thread(os.path.getsize, info.path) == size

    async def test_stat_absent_digest(self, conformance_store: ContentStore) -> None:
        """A well-formed digest the store lacks: ``stat`` and ``read`` raise :class:`NotFound`."""
        with pytest.raises(NotFound):
            await conformance_store.stat(ABSENT_DIGEST)
        with pytest.raises(NotFound):
            await read_all(conformance_store, ABSENT_DIGEST)

    @pytest.mark.parametrize("digest", MALFORMED_DIGESTS)
    async def test_malformed_digest(self, conformance_store: ContentStore, digest: str) -> None:
        """Malformed digests (path traversal among them) raise :class:`DigestInvalid`."""
        with pytest.raises(DigestInvalid):
            await conformance_store.stat(digest)
        with pytest.raises(DigestInvalid):
            await read_all(conformance_store, digest)

    async def test_read_whole_blobs(self, conformance_store: ContentStore,
                                    conformance_image: BuiltImage) -> None:
        """Each blob reads back whole, with its size and digest."""
        for digest, size in conformance_image.blobs.items():
            data = await read_all(conformance_store, digest)
            assert len(data) == size
            assert f"sha256:{hashlib.sha256(data).hexdigest()}" == digest

    async def test_read_ranges(self, conformance_store: ContentStore,
                               conformance_image: BuiltImage) -> None:
        """Ranges at the edges, across chunk boundaries, to the end and empty read correctly."""
        digest = max(conformance_image.blobs, key=conformance_image.blobs.__getitem__)
        expected = conformance_image.blob_path(digest).read_bytes()
        size = len(expected)
        mib = 1024 * 1024
        ranges: list[tuple[int, int | None]] = [
            (0, 1), (0, 10), (1, 100), (size - 5, None), (size - 1, 1), (size, None),
            (mib - 3, 10), (mib, mib // 3), (7, None), (0, size), (100, 0),
        ]
        for offset, length in ranges:
            end = size if length is None else offset + length
            got = await read_all(conformance_store, digest, offset, length)
            assert got == expected[offset:end], (offset, length)

    async def test_list_digests(self, conformance_store: ContentStore,
                                conformance_image: BuiltImage) -> None:
        """Every blob of the image is among the listed digests."""
        assert set(conformance_image.blobs) <= set(await conformance_store.list_digests())

    # -- events -----------------------------------------------------------------------
    async def test_events_image_created_and_deleted(self, conformance_store: ContentStore,
                                                     tmp_path: Path) -> None:
        """Tagging and untagging an image emit ``IMAGE_CREATED`` and ``IMAGE_DELETED``."""
        if not self.supports_events:
            pytest.skip("store does not support events")
        events = conformance_store.subscribe()
        workdir = tmp_path / "conformance-events"
        workdir.mkdir()
        image = await self.add_image(conformance_store, workdir, self.extra_reference, 7)
        created = await _next_event(
            events, self.event_timeout,
            lambda e: e.kind is StoreEventKind.IMAGE_CREATED and e.key == self.extra_reference)
        assert created.digest in (None, image.index_digest)
        assert await conformance_store.resolve(
            Reference.parse(self.extra_reference)) == image.index_digest
        await self.remove_image(conformance_store, image)
        deleted = await _next_event(
            events, self.event_timeout,
            lambda e: e.kind is StoreEventKind.IMAGE_DELETED and e.key == self.extra_reference)
        assert deleted.digest in (None, image.index_digest)
        with pytest.raises(NotFound):
            await conformance_store.resolve(Reference.parse(self.extra_reference))

    async def test_every_subscriber_gets_events(self, conformance_store: ContentStore,
                                                tmp_path: Path) -> None:
        """Two subscribers both get the same event."""
        if not self.supports_events:
            pytest.skip("store does not support events")
        first, second = conformance_store.subscribe(), conformance_store.subscribe()
        workdir = tmp_path / "conformance-events"
        workdir.mkdir()
        await self.add_image(conformance_store, workdir, self.extra_reference, 8)
        for events in (first, second):
            await _next_event(
                events, self.event_timeout,
                lambda e: e.kind is StoreEventKind.IMAGE_CREATED
                and e.key == self.extra_reference)

    async def test_subscription_ends_on_close(self, conformance_store: ContentStore) -> None:
        """Closing the store ends its event streams."""
        events = conformance_store.subscribe()
        await conformance_store.aclose()

        async def drain() -> None:
            async for _ in events:
                pass

        await asyncio.wait_for(drain(), self.event_timeout)
