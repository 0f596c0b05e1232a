"""The state tracker: keep the router's advertised keys equal to what the store holds.

At start, and again on every ``RESYNC``, the whole store is listed and the difference
advertised or withdrawn. In between, store events add and remove single keys; a
removal is only withdrawn after the store confirms the content is really gone.

Content a store is still downloading (the optional ``ArrivingStore`` part) is
advertised under :func:`~spegel_core.protocols.arriving_key` while it arrives, with
``--advertise-arriving``; the mark is withdrawn when the download ends without a
commit, and when the commit makes it ordinary content.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from spegel_core.compat import filter_patterns
from spegel_core.config import SpegelConfig
from spegel_core.errors import NotFound
from spegel_core.filters import RegistryFilter, filtered_digests
from spegel_core.oci.reference import Reference
from spegel_core.protocols import (
    AdvertisedKeys,
    ArrivingStore,
    ContentStore,
    Image,
    MetricsSink,
    Router,
    StoreEvent,
    StoreEventKind,
    arriving_key,
    tag_key,
)

log = logging.getLogger(__name__)


class StateTracker:
    """Advertises every digest and (unless filtered) every tag reference the store holds."""

    def __init__(self, config: SpegelConfig, store: ContentStore, router: Router,
                 metrics: MetricsSink) -> None:
        self.store = store
        self.router = router
        self.metrics = metrics
        self.resolve_tags = config.core.resolve_tags
        self.filter = RegistryFilter(filter_patterns(config))
        #: Digests only filtered images reference (``--registry-filters``): not advertised.
        self.blocked: set[str] = set()
        self.tags: dict[str, str] = {}  # tag key -> registry
        self.digests: set[str] = set()
        #: Digests advertised as arriving (still downloading here).
        self.arriving: set[str] = set()
        self.advertise_arriving = (config.core.advertise_arriving
                                   and isinstance(store, ArrivingStore))
        #: Every image the store holds (advertised by tag or not): reference -> (registry,
        #: digest); counts the image digests of each registry.
        self.images: dict[str, tuple[str, str]] = {}
        self._reported: dict[str, set[str]] = {}  # kind -> registries last reported
        self.synced = asyncio.Event()
        self._lock = asyncio.Lock()

    def allowed(self, reference: Reference) -> bool:
        """Whether the tag of ``reference`` is advertised (``--resolve-tags`` and not filtered)."""
        if not self.resolve_tags or reference.tag is None:
            return False
        return not self.filter.matches_reference(reference)

    async def run(self) -> None:
        """Sync, then follow store events until cancelled. Never raises on store errors."""
        events = self.store.subscribe()
        try:
            await self._sync_logged()
            async for event in events:
                await self.handle(event)
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()

    async def _sync_logged(self) -> None:
        try:
            await self.sync()
        except Exception:  # a store that cannot list now: RESYNC will come when it can
            log.exception("could not list the content store; will retry on its next event")

    async def sync(self) -> None:
        """List the store and advertise/withdraw the difference."""
        async with self._lock:
            images = await self.store.list_images()
            digests = set(await self.store.list_digests())
            arriving: set[str] = set()
            if self.advertise_arriving and isinstance(self.store, ArrivingStore):
                arriving = set(await self.store.list_arriving()) - digests
            self.blocked = await filtered_digests(self.store, images, self.filter)
            digests -= self.blocked
            tags = self._tags(images)
            gone = [*(set(self.tags) - set(tags)), *(self.digests - digests),
                    *(arriving_key(d) for d in self.arriving - arriving)]
            new = [*(set(tags) - set(self.tags)), *(digests - self.digests),
                   *(arriving_key(d) for d in arriving - self.arriving)]
            self.tags, self.digests, self.arriving = tags, digests, arriving
            self.images = {str(image.reference): (image.reference.registry, image.digest)
                           for image in images}
        if gone:
            await self.router.withdraw(gone)
        if new:
            await self.router.advertise(new)
        log.info("advertising %d tags and %d digests (%d new, %d withdrawn)",
                 len(self.tags), len(self.digests), len(new), len(gone))
        self._emit_counts()
        self.synced.set()

    def _tags(self, images: list[Image]) -> dict[str, str]:
        return {tag_key(image.reference): image.reference.registry
                for image in images if self.allowed(image.reference)}

    async def handle(self, event: StoreEvent) -> None:
        """Apply one store event to what is advertised; errors are logged, never raised."""
        try:
            if event.kind is StoreEventKind.RESYNC:
                await self.sync()
            elif event.kind is StoreEventKind.CONTENT_CREATED:
                await self._add_digest(event.key)
            elif event.kind is StoreEventKind.CONTENT_DELETED:
                await self._remove_digest(event.key)
            elif event.kind is StoreEventKind.CONTENT_ARRIVING:
                await self._add_arriving(event.key)
            elif event.kind is StoreEventKind.ARRIVING_ENDED:
                await self._remove_arriving(event.key)
            elif event.kind is StoreEventKind.IMAGE_CREATED:
                await self._image_created(event)
                await self._add_tag(event.key)
            elif event.kind is StoreEventKind.IMAGE_DELETED:
                await self._image_deleted(event.key)
                await self._remove_tag(event.key)
        except Exception:  # keep following events whatever one of them did
            log.exception("failed to handle store event %s", event)

    async def _add_digest(self, digest: str) -> None:
        if digest in self.digests or digest in self.blocked:
            return
        self.digests.add(digest)
        await self.router.advertise([digest])
        await self._remove_arriving(digest)  # committed: ordinary content from now on
        self._emit_counts()

    async def _add_arriving(self, digest: str) -> None:
        if not self.advertise_arriving or digest in self.arriving or digest in self.digests:
            return
        self.arriving.add(digest)
        await self.router.advertise([arriving_key(digest)])
        self._emit_counts()

    async def _remove_arriving(self, digest: str) -> None:
        if digest not in self.arriving:
            return
        self.arriving.discard(digest)
        await self.router.withdraw([arriving_key(digest)])
        self._emit_counts()

    async def _remove_digest(self, digest: str) -> None:
        if digest not in self.digests:
            return
        try:
            await self.store.stat(digest)
            return  # still there (deleted in one place, held in another)
        except NotFound:
            pass
        self.digests.discard(digest)
        await self.router.withdraw([digest])
        self._emit_counts()

    async def _add_tag(self, key: str) -> None:
        try:
            reference = Reference.parse(key)
        except Exception:
            log.debug("ignoring image event for %r: not a tag reference", key)
            return
        if not self.allowed(reference):
            return
        text = tag_key(reference)
        if text in self.tags:
            return
        self.tags[text] = reference.registry
        await self.router.advertise([text])
        self._emit_counts()

    async def _remove_tag(self, key: str) -> None:
        try:
            reference = Reference.parse(key)
        except Exception:
            return
        text = tag_key(reference)
        if text not in self.tags:
            return
        try:
            await self.store.resolve(reference)
            return  # re-tagged meanwhile
        except NotFound:
            pass
        del self.tags[text]
        await self.router.withdraw([text])
        self._emit_counts()

    async def _image_created(self, event: StoreEvent) -> None:
        try:
            reference = Reference.parse(event.key)
        except Exception:
            return
        digest = event.digest
        if digest is None:
            try:
                digest = await self.store.resolve(reference)
            except NotFound:
                return
        self.images[str(reference)] = (reference.registry, digest)
        self._emit_counts()
        if self.filter and self.filter.matches_reference(reference):
            await self.sync()  # withdraw what only this filtered image references

    async def _image_deleted(self, key: str) -> None:
        try:
            reference = Reference.parse(key)
        except Exception:
            return
        if str(reference) not in self.images:
            return
        try:
            digest = await self.store.resolve(reference)
        except NotFound:
            del self.images[str(reference)]
        else:  # re-tagged meanwhile
            self.images[str(reference)] = (reference.registry, digest)
        self._emit_counts()

    def _emit_counts(self) -> None:
        """Tags and image digests by registry, and all content, as ``AdvertisedKeys``.

        Image digests are the distinct advertised digests that the store's images
        point to. Content is every advertised digest; the store lists content flat,
        so it has no registry (``""``). A registry that has none left is reported
        once with a count of 0.
        """
        self._report("tag", Counter(self.tags.values()))
        self._report("digest", Counter(registry for registry, digest in set(self.images.values())
                                       if digest in self.digests))
        self.metrics.emit(AdvertisedKeys("content", "", len(self.digests)))
        if self.advertise_arriving:
            self.metrics.emit(AdvertisedKeys("arriving", "", len(self.arriving)))

    def _report(self, kind: str, counts: Counter[str]) -> None:
        for registry in self._reported.get(kind, set()) - set(counts):
            self.metrics.emit(AdvertisedKeys(kind, registry, 0))
        for registry, count in sorted(counts.items()):
            self.metrics.emit(AdvertisedKeys(kind, registry, count))
        self._reported[kind] = set(counts)

    def __repr__(self) -> str:
        return (f"<StateTracker tags={len(self.tags)} digests={len(self.digests)} "
                f"arriving={len(self.arriving)}>")
