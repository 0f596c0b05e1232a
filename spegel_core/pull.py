"""A small OCI pull client: what containerd asks a mirror, in the same order.

Used by ``spegel demo`` and the tests. Every byte is verified against its digest.
"""

from __future__ import annotations

import hashlib
import http.client
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

from spegel_core.oci.mediatypes import INDEX_TYPES, MANIFEST_TYPES
from spegel_core.oci.reference import Reference

ACCEPT = ", ".join(sorted(MANIFEST_TYPES))


class PullError(Exception):
    """A pull failed: an HTTP status other than 200, or content that does not verify."""


@dataclass
class PullResult:
    """What a pull fetched: the top digest, every verified digest, the bytes received.

    ``sources`` holds, by digest, where the mirror says it served it from (its
    ``X-Spegel-Source`` header; ``"local"`` without one).
    """

    reference: str
    digest: str
    verified: list[str] = field(default_factory=list)
    bytes: int = 0
    sources: dict[str, str] = field(default_factory=dict)  # digest -> X-Spegel-Source


Progress = Callable[[int, int], None]  # (bytes so far, bytes expected)


class MirrorClient:
    """Pulls through one mirror, on one kept-alive connection."""

    def __init__(self, host: str, port: int, *, timeout: float = 30.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        """Close the connection; the next request opens a new one."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str,
                headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        """Send one request and return the response (whose body the caller must read).

        A broken kept-alive connection is reopened and the request sent once more.
        """
        for attempt in range(2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, headers=headers or {})
                return self._conn.getresponse()
            except (ConnectionError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def pull(self, reference: str, progress: Progress | None = None) -> PullResult:
        """Pull ``reference`` as containerd does: HEAD the tag, then manifests, then blobs.

        Every manifest and blob is verified against its digest.

        :param progress: called with (bytes so far, bytes expected) of the blobs.
        :raises PullError: a status other than 200, a digest or size mismatch.
        """
        ref = Reference.parse(reference)
        base = f"/v2/{ref.repository}"
        ns = f"?ns={quote(ref.registry, safe='')}"
        response = self.request("HEAD", f"{base}/manifests/{ref.identifier}{ns}",
                                {"Accept": ACCEPT})
        response.read()
        if response.status != 200:
            raise PullError(f"HEAD {reference}: HTTP {response.status}")
        digest = response.getheader("Docker-Content-Digest") or ""
        result = PullResult(reference=reference, digest=digest)
        top = self._fetch(f"{base}/manifests/{digest}{ns}", digest, result, {"Accept": ACCEPT})
        doc = json.loads(top)
        manifests = [doc]
        if doc.get("mediaType") in INDEX_TYPES or "manifests" in doc:
            manifests = []
            for entry in doc["manifests"]:
                data = self._fetch(f"{base}/manifests/{entry['digest']}{ns}", entry["digest"],
                                   result, {"Accept": ACCEPT})
                manifests.append(json.loads(data))
        blobs: dict[str, int] = {}
        for manifest in manifests:
            for descriptor in [manifest["config"], *manifest.get("layers", [])]:
                blobs[descriptor["digest"]] = int(descriptor["size"])
        total = sum(blobs.values())
        done = 0
        for blob, size in blobs.items():
            def step(n: int, _size: int, start: int = done) -> None:
                if progress is not None:
                    progress(start + n, total)
            self._fetch(f"{base}/blobs/{blob}{ns}", blob, result, progress=step, size=size)
            done += size
        return result

    def _fetch(self, path: str, digest: str, result: PullResult,
               headers: dict[str, str] | None = None, *, progress: Progress | None = None,
               size: int | None = None) -> bytes:
        response = self.request("GET", path, headers)
        if response.status != 200:
            response.read()
            raise PullError(f"GET {path}: HTTP {response.status}")
        algorithm, _, expected = digest.partition(":")
        hasher = hashlib.new(algorithm)
        keep = bytearray()
        received = 0
        while True:
            chunk = response.read(1024 * 1024)
            if not chunk:
                break
            hasher.update(chunk)
            received += len(chunk)
            if "/manifests/" in path:
                keep += chunk
            if progress is not None:
                progress(received, size or received)
        if hasher.hexdigest() != expected:
            raise PullError(f"{digest}: digest mismatch after {received} bytes")
        if size is not None and received != size:
            raise PullError(f"{digest}: expected {size} bytes, got {received}")
        result.verified.append(digest)
        result.bytes += received
        result.sources[digest] = response.getheader("X-Spegel-Source") or "local"
        return bytes(keep)
