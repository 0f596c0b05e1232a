"""``--registry-filters``: which content this node neither serves nor advertises.

A filter is a regex matched (``re.search``) against ``registry/repository[:tag]``,
as the Go original matches its filters: a tag request is matched with its tag, a
digest request (manifest by digest, blob) without one. The same text decides what
the state tracker advertises: a filtered image's tag is never advertised, and
neither is a digest that only filtered images reference (a layer shared with an
image that is not filtered stays advertised, since it is served for that one).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence

from spegel_core.errors import NotFound
from spegel_core.oci.mediatypes import MAX_MANIFEST_SIZE
from spegel_core.oci.reference import Reference
from spegel_core.protocols import ContentStore, Image

log = logging.getLogger(__name__)

#: Manifests read per image when working out which digests an image references.
MAX_MANIFESTS_PER_IMAGE = 256


def filter_text(registry: str, repository: str, tag: str | None = None) -> str:
    """The text filters are matched against: ``registry/repository[:tag]``."""
    text = f"{registry}/{repository}"
    return f"{text}:{tag}" if tag else text


class RegistryFilter:
    """The compiled ``--registry-filters``; falsy when there are none."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = [re.compile(pattern) for pattern in patterns]

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def matches(self, registry: str, repository: str, tag: str | None = None) -> bool:
        """True when this content must be neither served nor advertised."""
        text = filter_text(registry, repository, tag)
        return any(pattern.search(text) for pattern in self.patterns)

    def matches_reference(self, reference: Reference) -> bool:
        """:meth:`matches` for a parsed reference."""
        return self.matches(reference.registry, reference.repository, reference.tag)

    def __repr__(self) -> str:
        return f"<RegistryFilter {[p.pattern for p in self.patterns]!r}>"


async def image_digests(store: ContentStore, digest: str) -> set[str]:
    """Every digest an image references that the store holds.

    That is the index, its manifests, their configs and layers. Only indexes and
    manifests are read (from the store itself); configs and layers are only looked up.
    """
    found: set[str] = set()
    pending: list[tuple[str, bool]] = [(digest, True)]  # (digest, is a manifest to read)
    while pending and len(found) < MAX_MANIFESTS_PER_IMAGE * 64:
        current, manifest = pending.pop()
        if current in found:
            continue
        try:
            info = await store.stat(current)
        except NotFound:
            continue
        found.add(current)
        if not manifest or info.size > MAX_MANIFEST_SIZE:
            continue
        try:
            data = b"".join([chunk async for chunk in store.read(current)])
            document = json.loads(data)
        except (NotFound, ValueError, UnicodeDecodeError):
            continue
        pending.extend(_children(document))
    return found


def _children(document: object) -> list[tuple[str, bool]]:
    if not isinstance(document, dict):
        return []
    children: list[tuple[str, bool]] = []
    for key, is_manifest in (("manifests", True), ("layers", False)):
        value = document.get(key)
        if isinstance(value, list):
            children.extend((d["digest"], is_manifest) for d in value
                            if isinstance(d, dict) and isinstance(d.get("digest"), str))
    config = document.get("config")
    if isinstance(config, dict) and isinstance(config.get("digest"), str):
        children.append((config["digest"], False))
    return children


async def filtered_digests(store: ContentStore, images: Iterable[Image],
                           registry_filter: RegistryFilter) -> set[str]:
    """Digests only filtered images reference (empty when there are no filters)."""
    if not registry_filter:
        return set()
    blocked: set[str] = set()
    kept: set[str] = set()
    for image in images:
        digests = await image_digests(store, image.digest)
        if registry_filter.matches_reference(image.reference):
            blocked |= digests
        else:
            kept |= digests
    return blocked - kept
