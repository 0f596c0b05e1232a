"""The peer path's I/O edge: what a peer's answer must be, and what a failure is.

Every blob answer (first fetch and resume alike) is checked here before a byte of
its body is used, whichever way the body is then relayed: its digest header, its
extent, the range asked for. Library exceptions and bad answers become the typed
errors of :mod:`spegel_core.errors` here, and only here: the penalty rules and the
counters read those types, never a message's text.
"""

from __future__ import annotations

import asyncio

import aiohttp

from spegel_core.errors import (
    OCIError,
    PeerBadHeaders,
    PeerConnectError,
    PeerDigestMismatch,
    PeerError,
    PeerLengthMismatch,
    PeerNotFound,
    PeerServerError,
    PeerStreamBroken,
    PeerTimeout,
)
from spegel_core.mirror.ranges import parse_range


def transport_error(exc: BaseException, *, streaming: bool = False) -> PeerError:
    """The typed error for an exception of aiohttp or the socket layer.

    :param exc: what aiohttp (or the OS) raised.
    :param streaming: the body was under way, so any transport failure is a broken stream.
    :returns: :class:`~spegel_core.errors.PeerStreamBroken` while streaming or when the
        body broke off; :class:`~spegel_core.errors.PeerTimeout`,
        :class:`~spegel_core.errors.PeerBadHeaders` (an answer that is not HTTP) or
        :class:`~spegel_core.errors.PeerConnectError` otherwise.
    """
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, PeerError):
        return exc
    if streaming or isinstance(exc, aiohttp.ClientPayloadError):
        return PeerStreamBroken(text)
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return PeerTimeout(text)
    if isinstance(exc, aiohttp.ClientResponseError):  # not HTTP, or a malformed head
        return PeerBadHeaders(text)
    return PeerConnectError(text)


def status_error(status: int, what: str) -> PeerError:
    """A peer answered ``status`` where 200 (or 206) was expected.

    A 5xx says the peer cannot serve anything now (it counts against the peer); a
    404 or any other status says it does not serve this content (against the pair).
    """
    if status >= 500:
        return PeerServerError(f"HTTP {status} for {what}")
    return PeerNotFound(f"HTTP {status} for {what}")


def check_digest_header(response: aiohttp.ClientResponse, digest: str) -> None:
    """Check the peer's ``Docker-Content-Digest``, when it sends one, against ``digest``.

    :raises PeerDigestMismatch: the peer claims another digest.
    """
    claimed = response.headers.get("Docker-Content-Digest")
    if claimed is not None and claimed.strip() != digest:
        raise PeerDigestMismatch(f"peer sent blob {claimed[:80]!r} for digest {digest}")


def check_range(range_header: str | None, size: int, start: int, length: int) -> None:
    """The peer sent the range asked for (as this node would have served it)."""
    if range_header is None:
        return
    try:
        wanted = parse_range(range_header, size)
    except OCIError as exc:  # e.g. the peer claims a size the range does not fit
        raise PeerLengthMismatch(
            f"peer's size {size} does not fit {range_header!r}: {exc}") from None
    if wanted is None or (wanted.start, wanted.length) != (start, length):
        raise PeerLengthMismatch(f"peer sent bytes {start}+{length} for {range_header!r}")


def extent(response: aiohttp.ClientResponse, range_header: str | None) -> tuple[int, int, int]:
    """(total size, first byte, length) of what the peer is sending."""
    try:
        length = int(response.headers.get("Content-Length", "-1"))
    except ValueError:
        raise PeerBadHeaders("peer sent an invalid Content-Length") from None
    if response.headers.get("Transfer-Encoding") is not None:
        raise PeerBadHeaders("peer sent a Transfer-Encoding (a mirror sends a Content-Length)")
    if response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        span, _, total = content_range.removeprefix("bytes ").partition("/")
        first, _, last = span.partition("-")
        try:
            start, end, size = int(first), int(last), int(total)
        except ValueError as exc:
            raise PeerBadHeaders(f"bad Content-Range {content_range!r}") from exc
        if length != end - start + 1 or not 0 <= start <= end < size:
            raise PeerBadHeaders(f"Content-Length does not match Content-Range {content_range!r}")
        return size, start, length
    if length < 0:
        raise PeerBadHeaders("peer sent no Content-Length")
    return length, 0, length
