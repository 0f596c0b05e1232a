"""Streams blobs into an OCI layout's ``blobs/sha256``: hashed while written, renamed into place.

The helpers of :mod:`spegel_core.oci.image_builder`: pseudo-random content
generated in chunks (never held whole), deterministic tar and gzip framing, and
writes through a temporary file so a reader never sees a partial blob under a
digest name.
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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from spegel_core.oci.mediatypes import OCI_LAYER, OCI_LAYER_GZIP

__all__ = ["CHUNK_SIZE", "FIXED_MTIME", "BlobWriter"]

#: Layer content is generated, hashed and written in chunks of this size.
CHUNK_SIZE = 8 * 1024 * 1024
#: mtime of every tar entry (2023-11-14T22:13:20Z): fixed so digests are stable.
FIXED_MTIME = 1_700_000_000


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


class BlobWriter:
    """Writes blobs into ``blobs/sha256`` through a temporary file and a rename.

    Every ``write_*`` method returns the blob's OCI descriptor (``mediaType``,
    ``digest``, ``size``) and records it in :attr:`blobs` and :attr:`media_types`.
    """

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
        """Write ``data`` as one blob."""
        file, name = self._open_temp()
        with file:
            file.write(data)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        return self._commit(name, digest, len(data), media_type)

    def write_json(self, document: dict[str, Any], media_type: str) -> dict[str, Any]:
        """Write ``document`` as compact JSON (keys in insertion order)."""
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
