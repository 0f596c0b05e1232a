"""What a peer's answer must be: its digest header, its extent, the range asked for.

Checked on every blob answer (first fetch and resume alike) before a byte of its
body is used, whichever way the body is then relayed.
"""

from __future__ import annotations

import aiohttp

from spegel_core.errors import OCIError, PeerError
from spegel_core.mirror.ranges import parse_range


def penalty_kind(reason: str) -> str:
    """A short label for a penalty reason (for counters): digest, stream, status or connect."""
    if "digest" in reason or "not a manifest" in reason or "too large" in reason:
        return "digest"
    if reason.startswith("stream") or "bytes" in reason or "Content-" in reason:
        return "stream"
    if reason.startswith("HTTP"):
        return "status"
    return "connect"


def check_digest_header(response: aiohttp.ClientResponse, digest: str) -> None:
    claimed = response.headers.get("Docker-Content-Digest")
    if claimed is not None and claimed.strip() != digest:
        raise PeerError(f"peer sent blob {claimed[:80]!r} for digest {digest}")


def check_range(range_header: str | None, size: int, start: int, length: int) -> None:
    """The peer sent the range asked for (as this node would have served it)."""
    if range_header is None:
        return
    try:
        wanted = parse_range(range_header, size)
    except OCIError as exc:  # e.g. the peer claims a size the range does not fit
        raise PeerError(f"peer's size {size} does not fit {range_header!r}: {exc}") from None
    if wanted is None or (wanted.start, wanted.length) != (start, length):
        raise PeerError(f"peer sent bytes {start}+{length} for {range_header!r}")


def extent(response: aiohttp.ClientResponse, range_header: str | None) -> tuple[int, int, int]:
    """(total size, first byte, length) of what the peer is sending."""
    try:
        length = int(response.headers.get("Content-Length", "-1"))
    except ValueError:
        raise PeerError("peer sent an invalid Content-Length") from None
    if response.headers.get("Transfer-Encoding") is not None:
        raise PeerError("peer sent a Transfer-Encoding (a mirror sends a Content-Length)")
    if response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        span, _, total = content_range.removeprefix("bytes ").partition("/")
        first, _, last = span.partition("-")
        try:
            start, end, size = int(first), int(last), int(total)
        except ValueError as exc:
            raise PeerError(f"bad Content-Range {content_range!r}") from exc
        if length != end - start + 1 or not 0 <= start <= end < size:
            raise PeerError(f"Content-Length does not match Content-Range {content_range!r}")
        return size, start, length
    if length < 0:
        raise PeerError("peer sent no Content-Length")
    return length, 0, length
