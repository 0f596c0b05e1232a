"""Write deterministic multi-platform OCI images into an image layout, with the stdlib only.

Used by ``spegel demo``, the tests and the benchmarks: no network and no registry
needed. The same arguments always give the same digests: layer content comes
from :class:`random.Random` seeded by ``seed``, platform and layer number; tar
entries have fixed owners, modes and mtimes; gzip headers carry no name and
mtime 0. The reference is recorded only in ``index.json``, so two references
built with the same seed share every blob.

Layout written (OCI image layout 1.0.0)::

    <dir>/oci-layout
    <dir>/index.json            one entry per reference (merged with what is there)
    <dir>/blobs/sha256/<hex>    layers, configs, manifests, the image index
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spegel_core.oci.blob_writer import BlobWriter
from spegel_core.oci.mediatypes import (
    CONTAINERD_NAME_ANNOTATION,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    REF_NAME_ANNOTATION,
)

__all__ = [
    "CONTAINERD_NAME_ANNOTATION",
    "REF_NAME_ANNOTATION",
    "BuiltImage",
    "build_image",
    "read_layout_index",
    "remove_image",
]

LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}

CREATED = "2023-11-14T22:13:20Z"

DEFAULT_PLATFORMS: tuple[tuple[str, str], ...] = (("linux", "amd64"), ("linux", "arm64"))
DEFAULT_LAYER_SIZES: tuple[int, ...] = (64 * 1024, 256 * 1024)


@dataclass(frozen=True)
class BuiltImage:
    """What :func:`build_image` wrote.

    ``manifest_digests`` and ``config_digests`` follow the order of the
    platforms; ``layer_digests`` lists every platform's layers in order.
    ``blobs`` maps every digest of the image to its size and ``media_types``
    maps it to the media type its descriptor declares.
    """

    reference: str
    layout_dir: Path
    index_digest: str
    manifest_digests: list[str]
    config_digests: list[str]
    layer_digests: list[str]
    blobs: dict[str, int]
    media_types: dict[str, str] = field(default_factory=dict)

    @property
    def total_size(self) -> int:
        """Bytes of all the image's blobs together."""
        return sum(self.blobs.values())

    def blob_path(self, digest: str) -> Path:
        """Where the blob ``digest`` of this image lives in the layout."""
        algorithm, _, encoded = digest.partition(":")
        return self.layout_dir / "blobs" / algorithm / encoded


def _atomic_write(path: Path, data: bytes) -> None:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    os.chmod(name, 0o644)
    os.replace(name, path)


def read_layout_index(layout_dir: Path) -> dict[str, Any]:
    """The layout's ``index.json`` as a dict (an empty index if there is none)."""
    path = Path(layout_dir) / "index.json"
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    if not isinstance(document, dict) or not isinstance(document.get("manifests", []), list):
        raise ValueError(f"{path} is not an OCI image index")
    document.setdefault("manifests", [])
    return document


def _names(descriptor: object) -> set[str]:
    if not isinstance(descriptor, dict):
        return set()
    annotations = descriptor.get("annotations")
    if not isinstance(annotations, dict):
        return set()
    return {annotations[key] for key in (REF_NAME_ANNOTATION, CONTAINERD_NAME_ANNOTATION)
            if isinstance(annotations.get(key), str)}


def _update_index(layout_dir: Path, reference: str, descriptor: dict[str, Any] | None) -> bool:
    """Drop the entries named ``reference`` from index.json and add ``descriptor``."""
    document = read_layout_index(layout_dir)
    kept = [entry for entry in document["manifests"] if reference not in _names(entry)]
    removed = len(kept) != len(document["manifests"])
    if descriptor is not None:
        kept.append(descriptor)
    document["manifests"] = kept
    _atomic_write(Path(layout_dir) / "index.json", json.dumps(document, indent=2).encode())
    return removed


def build_image(
    layout_dir: Path,
    reference: str = "docker.io/library/demo:v1",
    *,
    platforms: Sequence[tuple[str, str]] = DEFAULT_PLATFORMS,
    layer_sizes: Sequence[int] = DEFAULT_LAYER_SIZES,
    seed: int = 0,
    raw_layers: bool = False,
) -> BuiltImage:
    """Write a multi-platform image into the OCI layout ``layout_dir`` and tag it.

    ``index.json`` gets (or has replaced) one entry for ``reference`` carrying both
    the ``org.opencontainers.image.ref.name`` and ``io.containerd.image.name``
    annotations; entries of other references are kept.

    :param layout_dir: the layout directory; created if missing.
    :param reference: full reference recorded in ``index.json``.
    :param platforms: ``(os, architecture)`` pairs, one manifest each.
    :param layer_sizes: size of the data file in each layer (of each platform).
    :param seed: selects the pseudo-random content; same seed, same digests.
    :param raw_layers: write layers as plain random bytes (``...layer.v1.tar``
        media type, not real tar) without tar or gzip; fast for large
        benchmark blobs. Bytes are streamed to disk, never held whole.
    :returns: the digests and sizes of everything written.
    """
    if not platforms:
        raise ValueError("at least one platform is needed")
    if any(size < 0 for size in layer_sizes):
        raise ValueError("layer sizes cannot be negative")
    layout_dir = Path(layout_dir)
    layout_dir.mkdir(parents=True, exist_ok=True)
    writer = BlobWriter(layout_dir)
    manifests, configs, layers, entries = [], [], [], []
    for os_name, architecture in platforms:
        layer_descriptors, diff_ids = [], []
        for number, size in enumerate(layer_sizes):
            rng = random.Random(f"spegel-image:{seed}:{os_name}/{architecture}:{number}")
            descriptor, diff_id = writer.write_layer(rng, size, number, raw=raw_layers)
            layer_descriptors.append(descriptor)
            diff_ids.append(diff_id)
            layers.append(descriptor["digest"])
        config = writer.write_json({
            "created": CREATED,
            "architecture": architecture,
            "os": os_name,
            "config": {"Labels": {"spegel.dev/seed": str(seed)}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": CREATED, "created_by": f"spegel image builder layer {n}"}
                        for n in range(len(layer_sizes))],
        }, OCI_CONFIG)
        configs.append(config["digest"])
        manifest = writer.write_json({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config,
            "layers": layer_descriptors,
        }, OCI_MANIFEST)
        manifests.append(manifest["digest"])
        entries.append({**manifest, "platform": {"architecture": architecture, "os": os_name}})
    index = writer.write_json(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, OCI_INDEX
    )
    _atomic_write(layout_dir / "oci-layout", json.dumps(LAYOUT_VERSION).encode())
    annotations = {REF_NAME_ANNOTATION: reference, CONTAINERD_NAME_ANNOTATION: reference}
    _update_index(layout_dir, reference, {**index, "annotations": annotations})
    return BuiltImage(
        reference=reference,
        layout_dir=layout_dir,
        index_digest=index["digest"],
        manifest_digests=manifests,
        config_digests=configs,
        layer_digests=layers,
        blobs=dict(writer.blobs),
        media_types=dict(writer.media_types),
    )


def remove_image(layout_dir: Path, reference: str) -> bool:
    """Drop ``reference`` from the layout's ``index.json``; blobs stay.

    :returns: whether an entry was removed.
    """
    if not (Path(layout_dir) / "index.json").exists():
        return False
    return _update_index(Path(layout_dir), reference, None)
