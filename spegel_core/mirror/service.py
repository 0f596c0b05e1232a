"""What the /v2 routes do, apart from HTTP: find content locally (or via peers)."""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass

from spegel_core.config import SpegelConfig
from spegel_core.errors import BlobUnknown, ManifestUnknown, NameUnknown, NotFound
from spegel_core.oci.digest import hasher_for
from spegel_core.oci.mediatypes import MANIFEST_TYPES, MAX_MANIFEST_SIZE, sniff_manifest_type
from spegel_core.oci.reference import Reference
from spegel_core.protocols import ContentInfo, ContentStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest's verified bytes with its digest and media type."""

    digest: str
    media_type: str
    data: bytes


class ManifestCache:
    """Verified manifest bytes by digest (small LRU: manifests are read on every pull)."""

    def __init__(self, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, Manifest] = OrderedDict()
        self._size = 0

    def get(self, digest: str) -> Manifest | None:
        """The cached manifest of ``digest`` (now the most recently used), or None."""
        entry = self._entries.get(digest)
        if entry is not None:
            self._entries.move_to_end(digest)
        return entry

    def put(self, manifest: Manifest) -> None:
        """Cache ``manifest``, evicting the least recently used until ``max_bytes`` holds.

        A manifest larger than ``max_bytes`` is not cached.
        """
        if manifest.digest in self._entries or len(manifest.data) > self.max_bytes:
            return
        self._entries[manifest.digest] = manifest
        self._size += len(manifest.data)
        while self._size > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self._size -= len(old.data)

    def discard(self, digest: str) -> None:
        """Forget the manifest of ``digest``, if cached."""
        entry = self._entries.pop(digest, None)
        if entry is not None:
            self._size -= len(entry.data)


class MirrorService:
    """Local lookups for the mirror routes."""

    def __init__(self, config: SpegelConfig, store: ContentStore) -> None:
        self.config = config
        self.store = store
        self.manifests = ManifestCache()
        self._filters = [re.compile(p) for p in config.core.registry_filters]

    def check_registry(self, registry: str) -> None:
        """Refuse a registry outside ``--mirrored-registries`` (none set: all are mirrored).

        :raises NameUnknown: the registry is not mirrored by this node.
        """
        mirrored = self.config.core.mirrored_registries
        if mirrored and registry not in mirrored:
            raise NameUnknown(f"registry {registry} is not mirrored by this node")

    def filtered(self, reference: Reference) -> bool:
        """Whether ``--registry-filters`` exclude ``reference`` (neither served nor advertised)."""
        text = str(reference)
        return any(pattern.search(text) for pattern in self._filters)

    def tag_resolvable(self, reference: Reference) -> bool:
        """Whether the tag of ``reference`` is resolved here (``--resolve-tags``, not filtered)."""
        return self.config.core.resolve_tags and not self.filtered(reference)

    async def resolve_tag(self, reference: Reference) -> str:
        """The digest the local store holds for the tag of ``reference``.

        :raises ManifestUnknown: the tag is not resolvable here, or the store lacks it.
        """
        if not self.tag_resolvable(reference):
            raise ManifestUnknown(f"tag {reference} is not resolved by this mirror")
        try:
            return await self.store.resolve(reference)
        except NotFound:
            raise ManifestUnknown(f"manifest {reference} not found") from None

    async def local_manifest(self, digest: str) -> Manifest:
        """The manifest ``digest`` from the local store, verified against its digest.

        Verified manifests are cached.

        :raises ManifestUnknown: missing, too large, not a manifest, or corrupt
            (its bytes do not match the digest; logged as an error).
        """
        cached = self.manifests.get(digest)
        if cached is not None:
            return cached
        try:
            info = await self.store.stat(digest)
        except NotFound:
            raise ManifestUnknown(f"manifest {digest} not found") from None
        if info.size > MAX_MANIFEST_SIZE or (
            info.media_type is not None and info.media_type not in MANIFEST_TYPES
        ):
            raise ManifestUnknown(f"{digest} is not a manifest")
        data = b"".join([chunk async for chunk in self.store.read(digest)])
        hasher = hasher_for(digest)
        hasher.update(data)
        if f"{digest.partition(':')[0]}:{hasher.hexdigest()}" != digest:
            log.error("local content %s does not match its digest; not serving it", digest)
            raise ManifestUnknown(f"manifest {digest} is corrupt in the local store")
        media_type = info.media_type or sniff_manifest_type(data)
        if media_type is None:
            raise ManifestUnknown(f"{digest} is not a manifest")
        manifest = Manifest(digest, media_type, data)
        self.manifests.put(manifest)
        return manifest

    async def local_blob(self, digest: str) -> ContentInfo:
        """What the local store knows of blob ``digest`` (size, media type, file).

        :raises BlobUnknown: the store does not hold it.
        """
        try:
            return await self.store.stat(digest)
        except NotFound:
            raise BlobUnknown(f"blob {digest} not found") from None
