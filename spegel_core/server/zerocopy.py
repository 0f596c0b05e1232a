"""A uvicorn add-on: the ASGI ``http.response.zerocopy`` message, sent with ``os.sendfile``.

uvicorn does not implement a zero-copy extension (not even ASGI ``pathsend``),
and Starlette disables zero-copy for ranges. This subclass of uvicorn's httptools
protocol advertises ``scope["extensions"]["spegel.zerocopy"]`` and handles::

    {"type": "http.response.zerocopy", "file": <fd>, "offset": int, "count": int,
     "report": SpliceReport (optional)}

after ``http.response.start``; the server sends the end of the body itself, and fills
``report`` (bytes sent, ``Stop.DONE`` or ``Stop.DESTINATION_GONE``) when there is one.
The bytes go from the page cache to the socket in the kernel; Python only loops once
per socket-buffer's worth (megabytes). With ``"more_body": True`` the response stays
open for more messages (a file that is still growing is sent piece by piece); a send
that ends short closes the connection either way.
``{"type": "http.response.zerocopy", "abort": True}`` closes the connection of a
response whose source failed mid-body (never completed as if whole).

The same message can carry a source *socket* instead of a file (a peer's answer,
relayed without being read into Python)::

    {"type": "http.response.zerocopy", "socket": <fd>, "count": int,
     "more_body": bool, "source_timeout": float, "report": SpliceReport}

The bytes go socket to pipe to socket with ``splice(2)``
(:mod:`spegel_core.server.splice`). With ``"tap": HashTap`` they are also hashed on the
way and the body's last bytes stay in the tap (:mod:`spegel_core.server.tee`); ``count``
then includes the bytes fed to the tap, and ``socket`` may be -1 (none). The server
fills ``report`` (bytes moved, why it stopped) before ``send`` returns. With
``more_body`` the response stays open whatever happened to the source, so the
application can go on from another source (a resumed stream); without it, a source that
ends short closes the connection, as a short file does. A client that goes away is never
waited for.

It relies on uvicorn's ``RequestResponseCycle`` internals (``transport``,
``expected_content_length``, ``disconnected``, ``send``), so it is pinned to the
uvicorn range in pyproject.toml and refuses to load on a cycle without them.

It also bounds what one client can hold (uvicorn has no such limits):

- the URL and headers of a request (:data:`MAX_URL_BYTES`, :data:`MAX_HEADER_BYTES`),
  refused with a 400;
- open connections per client address (``--mirror-max-client-connections``): more are
  closed as soon as they are accepted, so one client cannot hold the server's
  connections and requests (:mod:`spegel_core.server.limits`) and starve the others.
  HTTP/1.1 carries one request at a time per connection, so this also caps a client's
  concurrent streams;
- the time to send a request's headers (``--mirror-header-timeout``), counted from the
  connection's opening or the request's first byte: a slowloris client that trickles
  headers is disconnected. Idle keep-alive connections close after uvicorn's
  ``timeout_keep_alive``; a client that stops reading a zero-copy response is dropped
  after :data:`SEND_IDLE_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from spegel_core.server.extension import ZEROCOPY_EXTENSION, ZEROCOPY_MESSAGE
from spegel_core.server.limits import (
    ConnectionLimits as ConnectionLimits,  # re-exported: its home before limits.py
)
from spegel_core.server.limits import (
    Refusals,
    is_own_client,
    too_many_requests,
)
from spegel_core.server.splice import SpliceReport, Stop, fd_ready, splice_sockets
from spegel_core.server.tee import HashTap, splice_tee

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


#: Seconds between two warnings about refused connections.
_REFUSAL_LOG_INTERVAL = 10.0


class RequestTooLarge(Exception):
    """Raised from a parser callback; httptools reports it as a parse error (400)."""


class _ClientTable:
    """Open connections by client address, shared by every protocol of one server."""

    def __init__(self) -> None:
        self.open: Counter[str] = Counter()
        self.refused = 0
        self._logged = 0.0
        self.server = Refusals()
        self._cap: int | None = None

    def connection_cap(self, limits: ConnectionLimits) -> int:
        if self._cap is None:
            self._cap = limits.connection_cap()
        return self._cap

    def refuse(self, host: str, limit: int) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._logged >= _REFUSAL_LOG_INTERVAL:
            self._logged = now
            log.warning("client %s holds %d connections (the limit); closing new ones "
                        "(%d refused so far)", host, limit, self.refused)


class ZeroCopyHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the ``spegel.zerocopy`` extension and limits."""

    limits = ConnectionLimits()
    _own = False
    _request_bytes = 0
    _client_host: str | None = None
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Admit the connection within the caps (total, per client); arm the header timer."""
        super().connection_made(transport)
        table = _client_table(self.server_state)
        host = self.client[0] if self.client else None
        self._own = is_own_client(host, self.server[0] if self.server else None)
        if not self._own:
            cap = table.connection_cap(self.limits)
            if len(self.connections) > cap:
                table.server.refused("connection", cap)
                transport.close()
                return
        if host is not None:
            if table.open[host] >= self.limits.max_client_connections:
                table.refuse(host, self.limits.max_client_connections)
                transport.close()
                return
            table.open[host] += 1
            self._client_host = host
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the header timer and give the client's connection slot back."""
        self._disarm_header_timer()
        host, self._client_host = self._client_host, None
        if host is not None:
            table = _client_table(self.server_state)
            table.open[host] -= 1
            if table.open[host] <= 0:
                del table.open[host]
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.limits.header_timeout,
                                                      self._header_timeout_expired)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout_expired(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_header_timer()  # a pipelined request waits for the current response
            return
        log.debug("%s sent no complete request head in %.0fs; closing",
                  self._client_host, self.limits.header_timeout)
        self.transport.close()

    def on_message_begin(self) -> None:
        """A request starts: count its head afresh and arm the header timer."""
        self._request_bytes = 0
        self._arm_header_timer()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        """The request head is complete: stop the header timer."""
        self._disarm_header_timer()
        super().on_headers_complete()

    def on_url(self, url: bytes) -> None:
        """Count ``url`` against the head limit; :class:`RequestTooLarge` over it."""
        self._request_bytes += len(url)
        if self._request_bytes > MAX_URL_BYTES:
            raise RequestTooLarge("URL too long")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count a header against the head limit; :class:`RequestTooLarge` over it."""
        self._request_bytes += len(name) + len(value)
        if self._request_bytes > MAX_URL_BYTES + MAX_HEADER_BYTES:
            raise RequestTooLarge("request headers too large")
        super().on_header(name, value)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        limits = self.limits
        cap = limits.max_requests if self._own else limits.max_requests - limits.reserved_own
        if len(self.tasks) >= cap:  # requests in flight, server-wide (idle sockets are not)
            _client_table(self.server_state).server.refused("request", cap)
            app = too_many_requests
        scope: Any = cycle.scope
        scope.setdefault("extensions", {})[ZEROCOPY_EXTENSION] = {}
        cycle.send = _wrap_send(cycle, cycle.send)  # type: ignore[method-assign,assignment]
        super()._start_asgi_task(cycle, app)


def limited_protocol(limits: ConnectionLimits) -> type[ZeroCopyHttpToolsProtocol]:
    """The protocol class to hand uvicorn for a server with these limits."""
    return type("LimitedZeroCopyHttpToolsProtocol", (ZeroCopyHttpToolsProtocol,),
                {"limits": limits})


def _client_table(server_state: Any) -> _ClientTable:
    table = getattr(server_state, "spegel_clients", None)
    if table is None:
        table = _ClientTable()
        server_state.spegel_clients = table
    assert isinstance(table, _ClientTable)
    return table


def _wrap_send(
    cycle: RequestResponseCycle, send: Callable[[Any], Awaitable[None]]
) -> Callable[[Any], Awaitable[None]]:
    async def zerocopy_send(message: Any) -> None:
        if message["type"] != ZEROCOPY_MESSAGE:
            await send(message)
            return
        if message.get("abort", False):
            _abort(cycle)  # the source failed mid-body: the client sees a short read
            return
        count = int(message["count"])
        if count > cycle.expected_content_length:
            raise RuntimeError("zero-copy response longer than Content-Length")
        if "socket" in message:
            await _splice_message(cycle, send, message, count)
            return
        sent = await _send_file(cycle, message["file"], int(message["offset"]), count)
        cycle.expected_content_length -= sent
        report = message.get("report")
        if isinstance(report, SpliceReport):  # the sender wants to know how it ended
            report.moved = sent
            report.stop = Stop.DONE if sent == count else Stop.DESTINATION_GONE
        if sent < count:
            # Client gone or file truncated: the response cannot complete. Closing
            # the connection makes the client see a short read, never a whole 200.
            _abort(cycle)
            return
        if message.get("more_body", False):
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return zerocopy_send


def _abort(cycle: RequestResponseCycle) -> None:
    cycle.transport.close()
    cycle.disconnected = True


async def _splice_message(cycle: RequestResponseCycle, send: Callable[[Any], Awaitable[None]],
                          message: Any, count: int) -> None:
    report = message["report"]
    assert isinstance(report, SpliceReport)
    more_body = bool(message.get("more_body", False))
    client_fd = await _client_fd(cycle)
    if client_fd is None:
        report.moved, report.stop, report.detail = 0, Stop.DESTINATION_GONE, "client gone"
        return
    tap = message.get("tap")
    try:
        if isinstance(tap, HashTap):
            result = await splice_tee(int(message["socket"]), client_fd, count, tap,
                                      source_timeout=float(message["source_timeout"]),
                                      destination_timeout=SEND_IDLE_TIMEOUT)
        else:
            result = await splice_sockets(int(message["socket"]), client_fd, count,
                                          source_timeout=float(message["source_timeout"]),
                                          destination_timeout=SEND_IDLE_TIMEOUT)
    finally:
        os.close(client_fd)
    cycle.expected_content_length -= result.moved
    report.moved, report.stop, report.detail = result.moved, result.stop, result.detail
    if result.stop is Stop.DESTINATION_GONE:
        log.debug("spliced send ended: %s", result.detail)
        _abort(cycle)
    elif result.moved < count and not more_body:
        _abort(cycle)  # never a whole 200 from a source that ended short
    elif not more_body:
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _client_fd(cycle: RequestResponseCycle) -> int | None:
    """A private descriptor of the client's socket once the transport's buffer is empty.

    Headers (and any body bytes) went through the transport's buffer; it must be
    empty before the kernel writes behind the transport's back. The descriptor is
    a ``dup``: if the transport closes the socket meanwhile, ours still refers to
    it (never to a reused descriptor number). None if the client is gone.
    """
    transport = cycle.transport
    waited = 0.0
    while transport.get_write_buffer_size() and not cycle.disconnected:
        if waited > SEND_IDLE_TIMEOUT:
            return None
        await asyncio.sleep(0.001)
        waited += 0.001
    if cycle.disconnected or transport.is_closing():
        return None
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    return os.dup(sock.fileno())


async def _send_file(cycle: RequestResponseCycle, file_fd: int, offset: int, count: int) -> int:
    loop = asyncio.get_running_loop()
    sock_fd = await _client_fd(cycle)
    if sock_fd is None:
        return 0
    sent = 0
    try:
        while sent < count:
            try:
                n = os.sendfile(sock_fd, file_fd, offset + sent, count - sent)
            except (BlockingIOError, InterruptedError):
                if not await fd_ready(loop, sock_fd, write=True, limit=SEND_IDLE_TIMEOUT):
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
