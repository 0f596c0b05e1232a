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

import gzip
import hashlib
import io
import json
import os
import random
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spegel_core.oci.mediatypes import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
)

__all__ = [
    "CONTAINERD_NAME_ANNOTATION",
    "REF_NAME_ANNOTATION",
    "BuiltImage",
    "build_image",
    "read_layout_index",
    "remove_image",
]

REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
CONTAINERD_NAME_ANNOTATION = "io.containerd.image.name"
LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}

#: Layer content is generated, hashed and written in chunks of this size.
CHUNK_SIZE = 8 * 1024 * 1024
#: mtime of every tar entry (2023-11-14T22:13:20Z): fixed so digests are stable.
FIXED_MTIME = 1_700_000_000
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


class _HashingWriter(io.RawIOBase):
    """A write-only file object that hashes and counts what passes through it."""

    def __init__(self, sink: Any) -> None:
        super().__init__()
        self._sink = sink
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.hash.update(view)
        self._sink.write(view)
        self.size += len(view)
        return len(view)

    @property
    def digest(self) -> str:
        return f"sha256:{self.hash.hexdigest()}"


def _random_chunks(rng: random.Random, size: int) -> Iterable[bytes]:
    remaining = size
    while remaining:
        chunk = rng.randbytes(min(CHUNK_SIZE, remaining))
        remaining -= len(chunk)
        yield chunk


class _RandomReader(io.RawIOBase):
    """A readable file of ``size`` pseudo-random bytes, generated as it is read."""

    def __init__(self, rng: random.Random, size: int) -> None:
        super().__init__()
        self._chunks = iter(_random_chunks(rng, size))
        self._chunk = b""
        self._position = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes; short only at the end (tarfile treats short as EOF)."""
        pieces: list[bytes] = []
        wanted = size
        while wanted != 0:
            if self._position == len(self._chunk):
                self._chunk, self._position = next(self._chunks, b""), 0
                if not self._chunk:
                    break
            available = len(self._chunk) - self._position
            take = available if wanted < 0 else min(available, wanted)
            pieces.append(self._chunk[self._position : self._position + take])
            self._position += take
            wanted = wanted - take if wanted > 0 else wanted
        return b"".join(pieces)


class _BlobWriter:
    """Writes blobs into ``blobs/sha256`` through a temporary file and a rename."""

    def __init__(self, layout_dir: Path) -> None:
        self.directory = layout_dir / "blobs" / "sha256"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.blobs: dict[str, int] = {}
        self.media_types: dict[str, str] = {}

    def _open_temp(self) -> tuple[Any, str]:
        fd, name = tempfile.mkstemp(prefix=".tmp-", dir=self.directory)
        return os.fdopen(fd, "wb"), name

    def _commit(self, temp_name: str, digest: str, size: int, media_type: str) -> dict[str, Any]:
        final = self.directory / digest.partition(":")[2]
        if final.is_file() and final.stat().st_size == size:
            os.unlink(temp_name)  # same digest, same bytes: already there
        else:
            os.chmod(temp_name, 0o644)
            os.replace(temp_name, final)
        self.blobs[digest] = size
        self.media_types[digest] = media_type
        return {"mediaType": media_type, "digest": digest, "size": size}

    def write_bytes(self, data: bytes, media_type: str) -> dict[str, Any]:
        file, name = self._open_temp()
        with file:
            file.write(data)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        return self._commit(name, digest, len(data), media_type)

    def write_json(self, document: dict[str, Any], media_type: str) -> dict[str, Any]:
        data = json.dumps(document, separators=(",", ":")).encode()
        return self.write_bytes(data, media_type)

    def write_layer(self, rng: random.Random, size: int, number: int, *,
                    raw: bool) -> tuple[dict[str, Any], str]:
        """Write one layer; returns its descriptor and its diff id (uncompressed digest)."""
        file, name = self._open_temp()
        try:
            with file:
                blob = _HashingWriter(file)
                if raw:
                    for chunk in _random_chunks(rng, size):
                        blob.write(chunk)
                    diff_id = blob.digest
                else:
                    with gzip.GzipFile(filename="", mode="wb", fileobj=blob, mtime=0,
                                       compresslevel=1) as compressed:
                        tar_stream = _HashingWriter(compressed)
                        _write_tar(tar_stream, rng, size, number)
                    diff_id = tar_stream.digest
        except BaseException:
            os.unlink(name)
            raise
        media_type = OCI_LAYER if raw else OCI_LAYER_GZIP
        return self._commit(name, blob.digest, blob.size, media_type), diff_id


def _tar_info(name: str, kind: bytes, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_tar(stream: Any, rng: random.Random, size: int, number: int) -> None:
    directory = f"layer{number}"
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        # Entries in sorted order: the directory, then its one file.
        tar.addfile(_tar_info(directory, tarfile.DIRTYPE))
        tar.addfile(_tar_info(f"{directory}/data.bin", tarfile.REGTYPE, size),
                    _RandomReader(rng, size))


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

    Args:
        layout_dir: the layout directory; created if missing.
        reference: full reference recorded in ``index.json``.
        platforms: ``(os, architecture)`` pairs, one manifest each.
        layer_sizes: size of the data file in each layer (of each platform).
        seed: selects the pseudo-random content; same seed, same digests.
        raw_layers: write layers as plain random bytes (``...layer.v1.tar``
            media type, not real tar) without tar or gzip; fast for large
            benchmark blobs. Bytes are streamed to disk, never held whole.

    Returns:
        The digests and sizes of everything written.
    """
    if not platforms:
        raise ValueError("at least one platform is needed")
    if any(size < 0 for size in layer_sizes):
        raise ValueError("layer sizes cannot be negative")
    layout_dir = Path(layout_dir)
    layout_dir.mkdir(parents=True, exist_ok=True)
    writer = _BlobWriter(layout_dir)
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

    Returns:
        Whether an entry was removed.
    """
    if not (Path(layout_dir) / "index.json").exists():
        return False
    return _update_index(Path(layout_dir), reference, None)
