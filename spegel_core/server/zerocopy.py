"""A uvicorn add-on: the ASGI ``http.response.zerocopy`` message, sent with ``os.sendfile``.

uvicorn does not implement a zero-copy extension (not even ASGI ``pathsend``),
and Starlette disables zero-copy for ranges. This subclass of uvicorn's httptools
protocol advertises ``scope["extensions"]["spegel.zerocopy"]`` and handles::

    {"type": "http.response.zerocopy", "file": <fd>, "offset": int, "count": int}

after ``http.response.start``. The bytes go from the page cache to the socket in
the kernel; Python only loops once per socket-buffer's worth (megabytes).

It relies on uvicorn's ``RequestResponseCycle`` internals (``transport``,
``expected_content_length``, ``disconnected``, ``send``), so it is pinned to the
uvicorn range in pyproject.toml and refuses to load on a cycle without them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from spegel_core.mirror.responses import ZEROCOPY_EXTENSION, ZEROCOPY_MESSAGE

log = logging.getLogger(__name__)

#: How long a client may leave its socket full before the send is abandoned.
SEND_IDLE_TIMEOUT = 60.0
_REQUIRED = ("transport", "expected_content_length", "disconnected", "send", "scope")


def check_uvicorn_compatible() -> None:
    """Fail loudly at start-up if uvicorn's cycle no longer looks as this add-on expects."""
    import inspect

    source = inspect.getsource(RequestResponseCycle.__init__)
    missing = [name for name in _REQUIRED if name != "send" and f"self.{name}" not in source]
    if missing or not hasattr(HttpToolsProtocol, "_start_asgi_task"):
        raise RuntimeError(f"uvicorn version not supported by the zero-copy add-on: {missing}")


#: Limits on what one request may send before it is refused with a 400.
MAX_URL_BYTES = 8 * 1024
MAX_HEADER_BYTES = 32 * 1024


class RequestTooLarge(Exception):
    """Raised from a parser callback; httptools reports it as a parse error (400)."""


class ZeroCopyHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the ``spegel.zerocopy`` extension and size limits."""

    _request_bytes = 0

    def on_message_begin(self) -> None:
        self._request_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._request_bytes += len(url)
        if self._request_bytes > MAX_URL_BYTES:
            raise RequestTooLarge("URL too long")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._request_bytes += len(name) + len(value)
        if self._request_bytes > MAX_URL_BYTES + MAX_HEADER_BYTES:
            raise RequestTooLarge("request headers too large")
        super().on_header(name, value)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        scope: Any = cycle.scope
        scope.setdefault("extensions", {})[ZEROCOPY_EXTENSION] = {}
        cycle.send = _wrap_send(cycle, cycle.send)  # type: ignore[method-assign,assignment]
        super()._start_asgi_task(cycle, app)


def _wrap_send(
    cycle: RequestResponseCycle, send: Callable[[Any], Awaitable[None]]
) -> Callable[[Any], Awaitable[None]]:
    async def zerocopy_send(message: Any) -> None:
        if message["type"] != ZEROCOPY_MESSAGE:
            await send(message)
            return
        count = int(message["count"])
        if count > cycle.expected_content_length:
            raise RuntimeError("zero-copy response longer than Content-Length")
        sent = await _send_file(cycle, message["file"], int(message["offset"]), count)
        cycle.expected_content_length -= sent
        if sent < count:
            # Client gone or file truncated: the response cannot complete. Closing
            # the connection makes the client see a short read, never a whole 200.
            cycle.transport.close()
            cycle.disconnected = True
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return zerocopy_send


async def _send_file(cycle: RequestResponseCycle, file_fd: int, offset: int, count: int) -> int:
    transport = cycle.transport
    loop = asyncio.get_running_loop()
    # Headers went through the transport's buffer; it must be empty before the
    # kernel writes behind the transport's back.
    waited = 0.0
    while transport.get_write_buffer_size() and not cycle.disconnected:
        if waited > SEND_IDLE_TIMEOUT:
            return 0
        await asyncio.sleep(0.001)
        waited += 0.001
    if cycle.disconnected or transport.is_closing():
        return 0
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    # A private descriptor: if the transport closes the socket meanwhile, ours
    # still refers to it (never to a reused descriptor number).
    sock_fd = os.dup(sock.fileno())
    sent = 0
    try:
        while sent < count:
            try:
                n = os.sendfile(sock_fd, file_fd, offset + sent, count - sent)
            except (BlockingIOError, InterruptedError):
                if not await _writable(loop, sock_fd):
                    log.debug("client stalled for %.0fs; abandoning send", SEND_IDLE_TIMEOUT)
                    break
                continue
            except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError) as exc:
                log.debug("zero-copy send ended: %s", exc)
                break
            if n == 0:
                break  # file shorter than announced
            sent += n
    finally:
        os.close(sock_fd)
    return sent


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> bool:
    future: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not future.done():
            future.set_result(None)

    loop.add_writer(fd, ready)
    try:
        await asyncio.wait_for(future, SEND_IDLE_TIMEOUT)
    except TimeoutError:
        return False
    finally:
        loop.remove_writer(fd)
    return True
