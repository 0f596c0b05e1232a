"""Content digests (``algorithm:encoded``), validated before they go anywhere near a path."""

from __future__ import annotations

import hashlib
import re

from spegel_core.errors import DigestInvalid

# Registered algorithms of the OCI image spec and their encoded lengths.
_ALGORITHMS = {"sha256": 64, "sha512": 128}
_ENCODED = re.compile(r"[a-f0-9]+")


def parse_digest(value: str) -> str:
    """Return ``value`` if it is a well-formed sha256/sha512 digest, else raise DigestInvalid.

    Only lowercase hex is accepted, so a valid digest is always safe as a file name.
    """
    algorithm, sep, encoded = value.partition(":")
    if not sep:
        raise DigestInvalid(f"invalid digest {value[:80]!r}: missing algorithm")
    length = _ALGORITHMS.get(algorithm)
    if length is None:
        raise DigestInvalid(f"invalid digest {value[:80]!r}: unsupported algorithm")
    if len(encoded) != length or not _ENCODED.fullmatch(encoded):
        raise DigestInvalid(f"invalid digest {value[:80]!r}: expected {length} lowercase hex")
    return value


def is_digest(value: str) -> bool:
    """Whether ``value`` is a valid digest (see :func:`parse_digest`)."""
    try:
        parse_digest(value)
    except DigestInvalid:
        return False
    return True


def split_digest(digest: str) -> tuple[str, str]:
    """``sha256:abc`` -> ``("sha256", "abc")`` for an already validated digest."""
    algorithm, _, encoded = digest.partition(":")
    return algorithm, encoded


def hasher_for(digest: str) -> hashlib._Hash:
    """A fresh hashlib object of the algorithm of ``digest``."""
    algorithm, _ = split_digest(digest)
    return hashlib.new(algorithm)


def compute_digest(data: bytes, algorithm: str = "sha256") -> str:
    """The digest of ``data`` (``sha256:<hex>`` by default)."""
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
