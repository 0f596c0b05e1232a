"""A content store over an OCI image layout directory.

Tags come from the name annotations of ``index.json`` (and of nested indexes);
blobs are the files ``blobs/<algorithm>/<encoded>``, served zero-copy through
:attr:`ContentInfo.path`. A poller re-reads the layout every interval and turns
what changed into :class:`~spegel_core.protocols.StoreEvent`s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType

from spegel_core.errors import BlobUnknown, ManifestUnknown
from spegel_core.oci.digest import parse_digest
from spegel_core.oci.reference import Reference
from spegel_core.protocols import (
    ContentInfo,
    Image,
    MetricsSink,
    StoreEvent,
    StoreEventKind,
    StoreStatus,
)
from spegel_core.store_events import EventStream
from spegel_core.store_kit import READ_CHUNK, StoreLifecycle, read_file_range, regular_file_size
from spegel_oci_layout.layout import (
    LayoutCorrupt,
    LayoutMissing,
    LayoutState,
    blob_path,
    load_layout,
    scan_blobs,
)

log = logging.getLogger(__name__)

__all__ = ["READ_CHUNK", "OCILayoutStore"]


class OCILayoutStore:
    """:class:`~spegel_core.protocols.ContentStore` over an OCI image layout.

    :param root: the layout directory (holding ``index.json`` and ``blobs/``).
    :param poll_interval: seconds between checks of the layout for changes.
    :param metrics: receives :class:`StoreConnection` each time the layout directory
        goes missing or comes back after start (the node reports the first state).
    """

    name = "oci-layout"

    def __init__(self, root: Path, *, poll_interval: float = 1.0,
                 metrics: MetricsSink | None = None) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.root = Path(root)
        self.poll_interval = poll_interval
        self.metrics = metrics
        self._reporting = False
        self._state = LayoutState()
        self._life = StoreLifecycle()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._bad_index_hash: str | None = None
        self._logged_skipped: set[str] = set()

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        """Load the layout and start polling it; a second call does nothing."""
        if not self._life.begin():
            return
        await self.refresh()
        self._reporting = True
        self._task = asyncio.create_task(self._poll(), name=f"oci-layout-poll {self.root}")
        log.info("OCI layout store at %s: %d images, %d blobs", self.root,
                 len(self._state.images), len(self._state.blobs))

    async def aclose(self) -> None:
        """Stop polling and end every subscription; safe to call twice."""
        if not self._life.end():
            return
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    async def __aenter__(self) -> OCILayoutStore:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.refresh()
            except Exception:  # the poller must outlive any surprise in a layout
                log.exception("polling the OCI layout %s failed", self.root)

    async def refresh(self) -> None:
        """Re-read the layout now and publish what changed (the poller calls this)."""
        async with self._lock:
            try:
                state = await asyncio.to_thread(load_layout, self.root, self._state)
            except LayoutMissing as exc:
                if self._life.set_connected(False, str(exc), metrics=self._metrics()):
                    log.warning("OCI layout unavailable: %s", exc)
                return
            except LayoutCorrupt as exc:
                if exc.index_hash != self._bad_index_hash:
                    log.warning("%s; keeping the previous %d images", exc,
                                len(self._state.images))
                self._bad_index_hash = exc.index_hash
                # Ready on the previous images; not reported as back (only a valid read is).
                self._life.set_connected(True, str(exc))
                return
            except OSError as exc:
                log.warning("cannot read OCI layout %s: %s", self.root, exc)
                self._life.detail = f"cannot read layout: {exc}"
                return
            if self._life.set_connected(True, metrics=self._metrics()):
                log.info("OCI layout %s is back", self.root)
            self._bad_index_hash = None
            if state is not self._state:
                previous, self._state = self._state, state
                self._publish_changes(previous, state)

    def _metrics(self) -> MetricsSink | None:
        """Where a change of the layout's presence goes (nowhere during ``start``)."""
        return self.metrics if self._reporting else None

    def _publish_changes(self, old: LayoutState, new: LayoutState) -> None:
        for value in sorted(new.skipped - self._logged_skipped):
            self._logged_skipped.add(value)
            log.debug("skipping name annotation %r: not a full tag reference", value)
        events: list[StoreEvent] = []
        for digest in sorted(new.blobs - old.blobs):
            events.append(StoreEvent(StoreEventKind.CONTENT_CREATED, digest))
        for key, image in sorted(old.images.items()):
            current = new.images.get(key)
            if current is None or current.digest != image.digest:
                events.append(StoreEvent(StoreEventKind.IMAGE_DELETED, key, image.digest))
        for key, image in sorted(new.images.items()):
            previous = old.images.get(key)
            if previous is None or previous.digest != image.digest:
                events.append(StoreEvent(StoreEventKind.IMAGE_CREATED, key, image.digest))
        for digest in sorted(old.blobs - new.blobs):
            events.append(StoreEvent(StoreEventKind.CONTENT_DELETED, digest))
        for event in events:
            self._life.publish(event)

    # -- content -----------------------------------------------------------------
    async def list_images(self) -> list[Image]:
        """Every tag reference in the layout, sorted."""
        return [image for _, image in sorted(self._state.images.items())]

    async def list_digests(self) -> list[str]:
        """Every blob file present now (valid digest names only), sorted."""
        return sorted(await asyncio.to_thread(scan_blobs, self.root))

    async def resolve(self, reference: Reference) -> str:
        """The digest ``reference`` is tagged with; raises :class:`ManifestUnknown`."""
        if reference.tag is None:
            if reference.digest is not None and reference.digest in self._state.blobs:
                return reference.digest
            raise ManifestUnknown(f"manifest {reference} is not in the OCI layout")
        key = str(Reference(reference.registry, reference.repository, reference.tag))
        image = self._state.images.get(key)
        if image is None:
            raise ManifestUnknown(f"tag {key} is not in the OCI layout")
        return image.digest

    def _path(self, digest: str) -> Path:
        return blob_path(self.root, parse_digest(digest))

    async def stat(self, digest: str) -> ContentInfo:
        """Size, media type and file of a blob; raises :class:`BlobUnknown`."""
        path = self._path(digest)
        size = regular_file_size(path)
        if size is None:
            raise BlobUnknown(f"blob {digest} is not in the OCI layout")
        return ContentInfo(digest=digest, size=size,
                           media_type=self._state.media_types.get(digest), path=str(path))

    async def read(self, digest: str, offset: int = 0,
                   length: int | None = None) -> AsyncIterator[bytes]:
        """Yield ``length`` bytes (to the end when None) from ``offset``, in 1 MiB chunks.

        Stops early at the end of the blob. Raises :class:`DigestInvalid`,
        :class:`BlobUnknown`, :class:`RangeInvalid` or :class:`RangeNotSatisfiable`.
        """
        path = self._path(digest)
        async for chunk in read_file_range(path, offset, length,
                                           missing=f"blob {digest} is not in the OCI layout"):
            yield chunk

    # -- events and status ---------------------------------------------------------
    def subscribe(self) -> EventStream:
        """Every change seen from now on; the iterator ends when the store is closed."""
        return self._life.subscribe()

    def status(self) -> StoreStatus:
        """Ready once started, unless the layout directory is gone."""
        return self._life.status()

    def __repr__(self) -> str:
        state = self._life.state
        if state == "running" and not self._life.connected:
            state = "missing"
        return (f"<OCILayoutStore {state} root={str(self.root)!r} "
                f"images={len(self._state.images)} blobs={len(self._state.blobs)} "
                f"subscribers={self._life.hub.subscribers}>")
