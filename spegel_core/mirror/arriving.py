"""Content that is still arriving: serving it to peers, and finding who has it.

A node whose store is downloading a blob (containerd's ingest) advertises it under
``arriving/<digest>`` (:func:`~spegel_core.protocols.arriving_key`) and serves it to
peers while it lands: :class:`ArrivingResponse` answers ``200`` (or ``206``) with the
expected size as ``Content-Length`` and follows the growing file to its end, with
``sendfile`` for each part already on disk and no polling in between (the store
wakes it when bytes arrive). If the download is abandoned, the response is cut
short: the peer sees a broken body, never a complete ``200`` of the wrong bytes.

Arriving content is served only to peers (requests with ``X-Spegel-Mirrored``):
the node's own containerd is the one writing it.

On the requesting side, :func:`committed_then_arriving` merges two lookups run side
by side: providers that hold the whole blob come first, then arriving ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from spegel_core.errors import ArrivingAborted, NotFound
from spegel_core.mirror.ranges import parse_range
from spegel_core.mirror.responses import ZEROCOPY_EXTENSION, ZEROCOPY_MESSAGE
from spegel_core.protocols import ArrivingContent, ArrivingStore, ContentStore, Peer
from spegel_core.server.splice import SpliceReport

log = logging.getLogger(__name__)

__all__ = ["ArrivingResponse", "arriving_response", "committed_then_arriving"]

#: Largest piece read through Python when the server has no zero-copy extension.
READ_CHUNK = 1024 * 1024
#: The ``X-Spegel-Source`` value of answers from arriving content.
SOURCE = "arriving"
#: How long a stream waits for new bytes before it is cut (the writer may be stuck).
STALL = 30.0


class ArrivingResponse(Response):
    """``count`` bytes of arriving content from ``offset``, sent as they land.

    :param content: the opened arriving content (closed when the response ends).
    :param offset: first byte.
    :param count: bytes to send (``Content-Length``).
    :param on_sent: called once at the end with the bytes sent.
    :param stall_timeout: how long to wait for new bytes before cutting the stream.
    """

    def __init__(self, content: ArrivingContent, offset: int, count: int, *,
                 on_sent: Callable[[int], None] | None = None, stall_timeout: float = STALL,
                 status_code: int = 200,
                 headers: Mapping[str, str] | None = None, media_type: str | None = None) -> None:
        self.content = content
        self.offset = offset
        self.count = count
        self.on_sent = on_sent
        self.stall_timeout = stall_timeout
        super().__init__(status_code=status_code, headers=headers, media_type=media_type)
        self.headers["content-length"] = str(count)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the content as it lands, zero-copy when the server allows.

        A download that aborts or stalls cuts the body short (never a complete 200);
        ``on_sent`` gets the bytes sent and the content is closed either way.
        """
        position = self.offset
        extension = ZEROCOPY_EXTENSION in scope.get("extensions", {})
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            if scope.get("method") == "HEAD" or self.count == 0:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            fd = self.content.fileno()
            zerocopy = fd is not None and extension
            end = self.offset + self.count
            while position < end:
                available = min(await self.content.wait(position, self.stall_timeout), end)
                if zerocopy:
                    report = SpliceReport()
                    wanted = available - position
                    await send({"type": ZEROCOPY_MESSAGE, "file": fd, "offset": position,
                                "count": wanted, "more_body": True, "report": report})
                    position += report.moved
                    if report.moved < wanted:
                        return  # the client went away; the server closed the connection
                    continue
                while position < available:
                    data = await self.content.read(position, min(READ_CHUNK, available - position))
                    if not data:
                        raise ArrivingAborted(f"{self.content.digest} shrank while being read")
                    position += len(data)
                    await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except ArrivingAborted as exc:
            log.info("cutting the stream of arriving %s at byte %d of %d: %s",
                     self.content.digest, position, self.offset + self.count, exc)
            if not extension:
                raise  # the server closes the connection: a short body, never a whole 200
            await send({"type": ZEROCOPY_MESSAGE, "abort": True})
        finally:
            if self.on_sent is not None:
                self.on_sent(position - self.offset)
            await asyncio.shield(self.content.aclose())


async def arriving_response(store: ContentStore, digest: str, range_header: str | None,
                            headers: dict[str, str],
                            on_sent: Callable[[int], None] | None = None,
                            *, started_only: bool = False) -> ArrivingResponse | None:
    """A response for ``digest`` if ``store`` has it arriving, else None.

    With ``started_only``, content of which no byte has landed yet counts as not here.

    ``headers`` get ``Content-Range`` for a range; raises
    :class:`~spegel_core.errors.RangeNotSatisfiable` for a range past the expected size.
    """
    if not isinstance(store, ArrivingStore):
        return None
    try:
        content = await store.open_arriving(digest)
    except NotFound:
        return None
    if started_only and content.size > 0:
        try:
            await content.wait(0, 0.0)
        except ArrivingAborted:  # nothing yet (or abandoned): not a source
            await content.aclose()
            return None
    try:
        byte_range = parse_range(range_header, content.size)
    except Exception:
        await content.aclose()
        raise
    offset, count, status = 0, content.size, 200
    if byte_range is not None:
        offset, count, status = byte_range.start, byte_range.length, 206
        headers["Content-Range"] = byte_range.content_range(content.size)
    return ArrivingResponse(content, offset, count, on_sent=on_sent, status_code=status,
                            headers=headers, media_type="application/octet-stream")


async def committed_then_arriving(committed: AsyncIterator[Peer],
                                  arriving: AsyncIterator[Peer]) -> AsyncIterator[Peer]:
    """Providers from ``committed`` as they are found, then those from ``arriving``.

    Both lookups run at the same time, so the arriving ones are ready (or nearly)
    when the committed lookup ends; a peer found by both is yielded once.
    """
    found: asyncio.Queue[Peer | None] = asyncio.Queue()

    async def collect() -> None:
        try:
            async for peer in arriving:
                found.put_nowait(peer)
        finally:
            found.put_nowait(None)

    task = asyncio.ensure_future(collect())
    seen: set[Peer] = set()
    try:
        async for peer in committed:
            seen.add(peer)
            yield peer
        while (late := await found.get()) is not None:
            if late not in seen:
                seen.add(late)
                yield late
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        for iterator in (committed, arriving):
            close = getattr(iterator, "aclose", None)
            if close is not None:
                await close()
