"""Responses that serve content: zero-copy from a file, or streamed from a store.

:class:`FileRangeResponse` sends an ASGI ``http.response.zerocopy`` message when
the server offers the ``spegel.zerocopy`` extension (our uvicorn add-on does:
``os.sendfile`` straight from the page cache, ranges included); under any other
ASGI server it falls back to 1 MiB ``pread`` chunks.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from spegel_core.errors import BlobUnknown
from spegel_core.server.extension import ZEROCOPY_EXTENSION, ZEROCOPY_MESSAGE
from spegel_core.server.splice import SpliceReport, Stop
from spegel_core.server.tee import HashTap

__all__ = ["FALLBACK_CHUNK", "ZEROCOPY_EXTENSION", "ZEROCOPY_MESSAGE", "ClientGone",
           "FileRangeResponse", "Relay", "RelayResponse", "SpliceSink", "StoreStreamResponse"]
FALLBACK_CHUNK = 1024 * 1024


class FileRangeResponse(Response):
    """``count`` bytes of ``path`` from ``offset``, zero-copy where the server allows.

    The file is opened when the response is built, so a file that vanished
    since ``stat`` becomes a 404 rather than a broken 200.
    """

    def __init__(self, path: str, offset: int, count: int, *, status_code: int = 200,
                 headers: Mapping[str, str] | None = None, media_type: str | None = None) -> None:
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise BlobUnknown("blob vanished from the content store") from exc
        try:
            size = os.fstat(self.fd).st_size
        except OSError:
            os.close(self.fd)
            raise
        if offset + count > size:
            os.close(self.fd)
            raise BlobUnknown("blob is shorter than recorded; not serving it")
        self.offset = offset
        self.count = count
        super().__init__(status_code=status_code, headers=headers, media_type=media_type)
        self.headers["content-length"] = str(count)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the headers, then the bytes: one zero-copy message, or ``pread`` chunks.

        The file descriptor is closed when the response ends, however it ends.

        :raises BlobUnknown: the file was truncated while being served (fallback path).
        """
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            if scope.get("method") == "HEAD" or self.count == 0:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            if ZEROCOPY_EXTENSION in scope.get("extensions", {}):
                await send({"type": ZEROCOPY_MESSAGE, "file": self.fd, "offset": self.offset,
                            "count": self.count})
                return
            await self._send_chunks(send)
        finally:
            os.close(self.fd)

    async def _send_chunks(self, send: Send) -> None:
        loop = asyncio.get_running_loop()
        position, remaining = self.offset, self.count
        while remaining:
            chunk = await loop.run_in_executor(
                None, os.pread, self.fd, min(FALLBACK_CHUNK, remaining), position
            )
            if not chunk:
                raise BlobUnknown("blob was truncated while being served")
            position += len(chunk)
            remaining -= len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": remaining > 0})


class StoreStreamResponse(Response):
    """Bytes from an async iterator with a known length (stores without files)."""

    def __init__(self, chunks: AsyncIterator[bytes], count: int, *, status_code: int = 200,
                 headers: Mapping[str, str] | None = None, media_type: str | None = None) -> None:
        self.chunks = chunks
        self.count = count
        super().__init__(status_code=status_code, headers=headers, media_type=media_type)
        self.headers["content-length"] = str(count)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the headers, then exactly ``count`` bytes from the iterator.

        :raises BlobUnknown: the iterator ended early (the body is cut, never completed).
        """
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        if scope.get("method") == "HEAD":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        remaining = self.count
        async for chunk in self.chunks:
            if len(chunk) > remaining:
                chunk = chunk[:remaining]
            remaining -= len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if not remaining:
                break
        if remaining:
            # The store ended early: never complete a short response as if whole.
            raise BlobUnknown("content ended before its recorded size")
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class ClientGone(Exception):
    """The client of a relayed response went away (nothing to retry, nobody to blame)."""


class SpliceSink:
    """Where a relay sends a response body: bytes it holds, or a socket's bytes.

    ``splice`` asks the server to move ``count`` bytes from ``fd`` to the client in
    the kernel and returns how many it moved and, when fewer, why the source
    stopped; it raises :class:`ClientGone` when the client did.
    """

    def __init__(self, send: Send, source_timeout: float) -> None:
        self._send = send
        self.source_timeout = source_timeout

    async def write(self, data: bytes) -> None:
        """Send ``data`` to the client as part of the body."""
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def splice(self, fd: int, count: int, tap: HashTap | None = None) -> tuple[int, str]:
        """Ask the server to move ``count`` bytes from socket ``fd`` to the client.

        With a ``tap`` the bytes are also hashed and the held tail is kept back
        (``count`` then includes the bytes fed to the tap, and ``fd`` may be -1).

        :returns: the bytes moved and why the source stopped (``"done"`` when all moved).
        :raises ClientGone: the client went away, or the server did not report.
        """
        report = SpliceReport()
        message = {"type": ZEROCOPY_MESSAGE, "socket": fd, "count": count, "more_body": True,
                   "source_timeout": self.source_timeout, "report": report}
        if tap is not None:
            message["tap"] = tap
        await self._send(message)
        if report.stop is None or report.stop is Stop.DESTINATION_GONE:
            raise ClientGone(report.detail)
        return report.moved, f"{report.stop.value}: {report.detail}" if report.detail \
            else report.stop.value


#: A relay: sends exactly the response's ``count`` bytes through the sink, or raises.
Relay = Callable[[SpliceSink], Awaitable[None]]


class RelayResponse(Response):
    """``count`` bytes a relay moves socket to socket (servers with ``spegel.zerocopy``)."""

    def __init__(self, relay: Relay, count: int, *, source_timeout: float,
                 status_code: int = 200, headers: Mapping[str, str] | None = None,
                 media_type: str | None = None) -> None:
        self.relay = relay
        self.count = count
        self.source_timeout = source_timeout
        super().__init__(status_code=status_code, headers=headers, media_type=media_type)
        self.headers["content-length"] = str(count)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the headers, run the relay, then end the body.

        A client that went away ends the response quietly; an exception of the relay
        propagates, so the server cuts the body short.
        """
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        try:
            await self.relay(SpliceSink(send, self.source_timeout))
        except ClientGone:
            return
        # The server refuses to complete a body shorter than Content-Length.
        await send({"type": "http.response.body", "body": b"", "more_body": False})
