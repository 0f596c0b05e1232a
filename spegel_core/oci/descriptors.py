"""OCI descriptors and what an index or manifest refers to (pure parsing, no I/O).

Shared by content stores that walk images from a target down to their blobs (to
learn each blob's media type and which digests an image consists of): the
containerd store uses :func:`children`; the OCI-layout store, which also reads the
name annotations of an index, uses :func:`decode_manifest` and :func:`descriptors_of`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from spegel_core.oci.digest import is_digest
from spegel_core.oci.mediatypes import INDEX_TYPES, MANIFEST_TYPES, sniff_manifest_type

__all__ = ["Child", "children", "decode_manifest", "descriptors_of", "is_manifest_type",
           "parse_descriptor"]


@dataclass(frozen=True, slots=True)
class Child:
    """A descriptor found in a manifest: the blob's digest and declared media type."""

    digest: str
    media_type: str | None


def is_manifest_type(media_type: str | None) -> bool:
    """Whether a blob of this declared type may be an index or manifest (None: maybe)."""
    return media_type is None or media_type in MANIFEST_TYPES


def parse_descriptor(descriptor: object) -> Child | None:
    """The digest and media type of a JSON descriptor, or None when it has no valid digest.

    :param descriptor: a decoded JSON value (anything: bad input gives None).
    :returns: a :class:`Child`; its ``media_type`` is None when absent or empty.
    """
    if not isinstance(descriptor, dict):
        return None
    digest = descriptor.get("digest")
    if not isinstance(digest, str) or not is_digest(digest):
        return None
    media_type = descriptor.get("mediaType")
    return Child(digest, media_type if isinstance(media_type, str) and media_type else None)


def decode_manifest(data: bytes, declared: str | None) -> tuple[str, dict[str, Any]] | None:
    """The media type and JSON object of the manifest (or index) ``data``.

    :param data: the bytes of a blob that may be a manifest.
    :param declared: the media type its descriptor declared, if any (used when it
        is a manifest type; else the type is sniffed from ``data``).
    :returns: None for bytes that are not a manifest (a config, a layer, invalid JSON).
    """
    media_type = declared if declared in MANIFEST_TYPES else sniff_manifest_type(data)
    if media_type is None:
        return None
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(document, dict):
        return None
    return media_type, document


def descriptors_of(media_type: str, document: dict[str, Any]) -> list[Child]:
    """The valid descriptors a decoded manifest refers to.

    :param media_type: its media type (from :func:`decode_manifest`).
    :param document: its JSON object.
    :returns: an index's manifests; a manifest's config and layers.
    """
    if media_type in INDEX_TYPES:
        entries = document.get("manifests")
        descriptors = entries if isinstance(entries, list) else []
    else:
        layers = document.get("layers")
        descriptors = [document.get("config"), *(layers if isinstance(layers, list) else [])]
    return [child for child in map(parse_descriptor, descriptors) if child is not None]


def children(data: bytes, declared: str | None) -> tuple[str | None, list[Child]]:
    """The media type of the manifest ``data`` and the descriptors it refers to.

    Returns ``(None, [])`` for bytes that are not a manifest (a config, a layer,
    invalid JSON). An index gives its manifests; a manifest gives its config and
    layers.

    :param data: the bytes of a blob that may be a manifest.
    :param declared: the media type its descriptor declared, if any.
    :returns: the media type and the descriptors.
    """
    decoded = decode_manifest(data, declared)
    if decoded is None:
        return None, []
    media_type, document = decoded
    return media_type, descriptors_of(media_type, document)
