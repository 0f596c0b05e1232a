"""Walking images from their target down to their blobs (no I/O of its own).

The containerd store learns from each image the media type of every blob
(``stat`` reports it) and which digests the image consists of (to announce
them when it appears). Manifests are immutable, so what a walk learned is kept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from spegel_containerd.manifests import children, is_manifest_type

__all__ = ["MAX_DEPTH", "ImageWalker", "ManifestReader"]

#: How deep indexes may nest below an image's target.
MAX_DEPTH = 8
#: Reads a manifest by digest; None when it is not held (or too large to be one).
ManifestReader = Callable[[str], Awaitable[bytes | None]]


class ImageWalker:
    """What walks found: media types, the children of each manifest, manifests not held."""

    def __init__(self) -> None:
        #: Digest -> media type, from the descriptors seen (or sniffed manifests).
        self.media_types: dict[str, str] = {}
        #: Manifest or index digest -> the digests it refers to.
        self.children: dict[str, list[str]] = {}
        #: Manifests an index names but the store does not hold (a platform never pulled).
        self.absent: set[str] = set()

    async def walk(self, read: ManifestReader, digest: str, media_type: str | None,
                   depth: int = 0, *, fresh: bool = False) -> None:
        """Follow ``digest`` down to its blobs, recording media types and children.

        Manifests found absent are not read again unless ``fresh`` (an image
        event), or until :attr:`absent` is cleared (a new connection).
        """
        if media_type:
            self.media_types.setdefault(digest, media_type)
        if depth > MAX_DEPTH or not is_manifest_type(media_type):
            return
        if digest in self.children:
            for known in self.children[digest] if fresh else ():
                if known in self.absent or known in self.children:
                    await self.walk(read, known, self.media_types.get(known), depth + 1,
                                    fresh=True)
            return
        if digest in self.absent and not fresh:
            return
        data = await read(digest)
        if data is None:
            self.absent.add(digest)
            return
        self.absent.discard(digest)
        found_type, found = children(data, media_type)
        self.children[digest] = [child.digest for child in found]
        if found_type is not None:
            self.media_types.setdefault(digest, found_type)
        for child in found:
            if child.media_type:
                self.media_types.setdefault(child.digest, child.media_type)
            if is_manifest_type(child.media_type):
                await self.walk(read, child.digest, child.media_type, depth + 1, fresh=fresh)

    def tree(self, root: str) -> set[str]:
        """``root`` and every digest found below it."""
        seen = {root}
        pending = [root]
        while pending:
            for child in self.children.get(pending.pop(), ()):
                if child not in seen:
                    seen.add(child)
                    pending.append(child)
        return seen
