"""Reading an OCI image layout into a snapshot: tags, blob digests, media types.

Plain blocking functions with no shared state, run in a worker thread by
:class:`~spegel_oci_layout.store.OCILayoutStore`. Every file name is built from
a validated digest only.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spegel_core.errors import OCIError
from spegel_core.oci.descriptors import decode_manifest, descriptors_of, parse_descriptor
from spegel_core.oci.digest import is_digest, split_digest
from spegel_core.oci.mediatypes import (
    CONTAINERD_NAME_ANNOTATION,
    INDEX_TYPES,
    MANIFEST_TYPES,
    REF_NAME_ANNOTATION,
)
from spegel_core.oci.reference import Reference
from spegel_core.protocols import Image
from spegel_core.store_kit import read_manifest_file

__all__ = [
    "CONTAINERD_NAME_ANNOTATION",
    "REF_NAME_ANNOTATION",
    "LayoutCorrupt",
    "LayoutMissing",
    "LayoutState",
    "blob_path",
    "load_layout",
    "scan_blobs",
]

ALGORITHMS = ("sha256", "sha512")
#: How deep indexes may nest below index.json.
MAX_DEPTH = 8
#: index.json holds one descriptor per tag; anything larger is refused.
MAX_INDEX_JSON = 64 * 1024 * 1024


class LayoutMissing(Exception):
    """The layout directory does not exist (or is not a directory)."""


class LayoutCorrupt(Exception):
    """``index.json`` exists but is not a readable OCI index."""

    def __init__(self, message: str, index_hash: str) -> None:
        super().__init__(message)
        self.index_hash = index_hash


@dataclass(frozen=True)
class LayoutState:
    """What a layout held at one moment."""

    #: Tag reference string (``docker.io/library/demo:v1``) -> image.
    images: dict[str, Image] = field(default_factory=dict)
    #: Digest -> media type, from every descriptor seen.
    media_types: dict[str, str] = field(default_factory=dict)
    #: Digests of the blob files present.
    blobs: frozenset[str] = frozenset()
    #: sha256 of the bytes of index.json ("" when there is none).
    index_hash: str = ""
    #: Name annotations that are not full tag references (for example just ``v1``).
    skipped: frozenset[str] = frozenset()


def blob_path(root: Path, digest: str) -> Path:
    """``<root>/blobs/<algorithm>/<encoded>`` for an already validated digest."""
    algorithm, encoded = split_digest(digest)
    return root / "blobs" / algorithm / encoded


def scan_blobs(root: Path) -> frozenset[str]:
    """Digests of the regular files under ``blobs/`` whose names are valid digests."""
    found = set()
    for algorithm in ALGORITHMS:
        try:
            entries = list(os.scandir(root / "blobs" / algorithm))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            digest = f"{algorithm}:{entry.name}"
            try:
                if is_digest(digest) and entry.is_file(follow_symlinks=False):
                    found.add(digest)
            except OSError:  # vanished between scandir and is_file
                continue
    return frozenset(found)


def load_layout(root: Path, previous: LayoutState | None = None) -> LayoutState:
    """Read the layout at ``root``; returns ``previous`` itself when nothing changed.

    :raises LayoutMissing: ``root`` is not a directory.
    :raises LayoutCorrupt: ``index.json`` is not valid JSON or not an index.
    """
    if not root.is_dir():
        raise LayoutMissing(f"{root} does not exist or is not a directory")
    blobs = scan_blobs(root)
    try:
        with open(root / "index.json", "rb") as file:
            data: bytes | None = file.read(MAX_INDEX_JSON + 1)
    except (FileNotFoundError, NotADirectoryError):
        data = None
    index_hash = hashlib.sha256(data).hexdigest() if data is not None else ""
    if previous is not None and previous.index_hash == index_hash and previous.blobs == blobs:
        return previous
    document: dict[str, Any] = {"manifests": []}
    if data is not None:
        if len(data) > MAX_INDEX_JSON:
            raise LayoutCorrupt(f"{root / 'index.json'} is larger than 64 MiB", index_hash)
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise LayoutCorrupt(f"{root / 'index.json'} is not valid JSON: {exc}",
                                index_hash) from exc
        if not isinstance(document, dict) or not isinstance(document.get("manifests"), list):
            raise LayoutCorrupt(f"{root / 'index.json'} has no manifests list", index_hash)
    walker = _Walker(root, blobs)
    walker.walk(document, depth=0)
    return LayoutState(images=walker.images, media_types=walker.media_types, blobs=blobs,
                       index_hash=index_hash, skipped=frozenset(walker.skipped))


def parse_image_name(value: str) -> Reference | None:
    """A full tag reference from a name annotation, or None (``v1``, digests, garbage)."""
    if "/" not in value:  # a bare tag ("v1") or a bare name: not a full reference
        return None
    try:
        reference = Reference.parse(value)
    except OCIError:
        return None
    if reference.tag is None:
        return None
    return Reference(reference.registry, reference.repository, reference.tag)


class _Walker:
    """Follows descriptors from index.json through nested indexes and manifests."""

    def __init__(self, root: Path, blobs: frozenset[str]) -> None:
        self.root = root
        self.blobs = blobs
        self.images: dict[str, Image] = {}
        self.media_types: dict[str, str] = {}
        self.skipped: set[str] = set()
        self._seen: set[str] = set()

    def walk(self, document: dict[str, Any], depth: int) -> None:
        manifests = document.get("manifests")
        for descriptor in manifests if isinstance(manifests, list) else []:
            digest = self._descriptor(descriptor)
            if digest is None:
                continue
            self._name(descriptor, digest)
            if digest in self.blobs and digest not in self._seen and depth < MAX_DEPTH:
                self._seen.add(digest)
                self._follow(digest, depth + 1)

    def _descriptor(self, descriptor: object) -> str | None:
        """Record the media type of a descriptor; return its digest if valid."""
        parsed = parse_descriptor(descriptor)
        if parsed is None:
            return None
        if parsed.media_type is not None:
            self.media_types.setdefault(parsed.digest, parsed.media_type)
        return parsed.digest

    def _name(self, descriptor: dict[str, Any], digest: str) -> None:
        annotations = descriptor.get("annotations")
        if not isinstance(annotations, dict):
            return
        names = [annotations.get(key) for key in (REF_NAME_ANNOTATION, CONTAINERD_NAME_ANNOTATION)]
        values = [name for name in names if isinstance(name, str) and name]
        for value in values:
            reference = parse_image_name(value)
            if reference is not None:
                self.images.setdefault(str(reference), Image(reference, digest))
                return
        self.skipped.update(values)

    def _follow(self, digest: str, depth: int) -> None:
        declared = self.media_types.get(digest)
        if declared is not None and declared not in MANIFEST_TYPES:
            return  # a layer or config listed in an index: nothing to follow
        data = read_manifest_file(blob_path(self.root, digest))
        decoded = decode_manifest(data, declared) if data is not None else None
        if decoded is None:
            return
        media_type, document = decoded
        if media_type in INDEX_TYPES:
            self.walk(document, depth)  # an index's entries may carry name annotations
            return
        for child in descriptors_of(media_type, document):
            if child.media_type is not None:
                self.media_types.setdefault(child.digest, child.media_type)
