"""What an image index or manifest refers to (pure parsing, no I/O).

The containerd store walks each image from its target descriptor down through
indexes and manifests, to learn the media type of every blob (``stat`` reports
it) and which digests an image consists of (to announce them when it appears).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from spegel_core.oci.digest import is_digest
from spegel_core.oci.mediatypes import INDEX_TYPES, MANIFEST_TYPES, sniff_manifest_type

__all__ = ["Child", "children", "is_manifest_type"]


@dataclass(frozen=True, slots=True)
class Child:
    """A descriptor found in a manifest: the blob's digest and declared media type."""

    digest: str
    media_type: str | None


def is_manifest_type(media_type: str | None) -> bool:
    """Whether a blob of this declared type may be an index or manifest (None: maybe)."""
    return media_type is None or media_type in MANIFEST_TYPES


def _child(descriptor: object) -> Child | None:
    if not isinstance(descriptor, dict):
        return None
    digest = descriptor.get("digest")
    if not isinstance(digest, str) or not is_digest(digest):
        return None
    media_type = descriptor.get("mediaType")
    return Child(digest, media_type if isinstance(media_type, str) and media_type else None)


def children(data: bytes, declared: str | None) -> tuple[str | None, list[Child]]:
    """The media type of the manifest ``data`` and the descriptors it refers to.

    Returns ``(None, [])`` for bytes that are not a manifest (a config, a layer,
    invalid JSON). An index gives its manifests; a manifest gives its config and
    layers.
    """
    media_type = declared if declared in MANIFEST_TYPES else sniff_manifest_type(data)
    if media_type is None:
        return None, []
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None, []
    if not isinstance(document, dict):
        return None, []
    if media_type in INDEX_TYPES:
        entries = document.get("manifests")
        descriptors = entries if isinstance(entries, list) else []
    else:
        layers = document.get("layers")
        descriptors = [document.get("config"), *(layers if isinstance(layers, list) else [])]
    found = [child for child in map(_child, descriptors) if child is not None]
    return media_type, found
