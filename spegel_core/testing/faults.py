"""Misbehaving peers and a byte-exact HTTP client, for fault and security tests.

- :class:`HostilePeer`: an asyncio HTTP server on a loopback address that answers
  every request with whatever its ``respond`` function returns (wrong bytes, wrong
  lengths, wrong ranges, garbage), optionally holding the connection open after.
- :func:`honest_responder`: a ``respond`` that serves blobs of a built image like a
  mirror does (a starting point to corrupt).
- :func:`raw_get`: one GET with a plain socket that reports whether the body was
  complete, so a test can tell "a 200 that broke off" from "a complete 200".
- :class:`SeedDiscovery`: a fixed list of bootstrap addresses, for routers a test
  runs in its own process (to advertise a hostile peer into a real cluster's DHT).

Everything listens on and connects to 127.0.0.0/8 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from spegel_core.oci.image_builder import BuiltImage
from spegel_core.protocols import Peer, PeerAddress

__all__ = ["HostilePeer", "RawResponse", "Respond", "SeedDiscovery", "honest_responder",
           "http_response",
           "raw_get"]

#: ``respond(target, headers, digest)``: the bytes to write back (status line included).
Respond = Callable[[str, dict[str, str], str], bytes]


def _check_loopback(host: str) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"test peers use loopback addresses only, not {host}")


def http_response(status: str, headers: dict[str, str], body: bytes) -> bytes:
    """An HTTP/1.1 response, ``Connection: close``, exactly as given (no length added)."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"HTTP/1.1 {status}\r\n{head}Connection: close\r\n\r\n".encode() + body


def honest_responder(image: BuiltImage) -> Respond:
    """Serve the blobs of ``image`` like a mirror: whole, or the single range asked for."""
    def respond(target: str, headers: dict[str, str], digest: str) -> bytes:
        try:
            data = image.blob_path(digest).read_bytes()
        except (OSError, ValueError, KeyError):
            return http_response("404 Not Found", {"Content-Length": "0"}, b"")
        common = {"Docker-Content-Digest": digest}
        spec = headers.get("range")
        if spec is None:
            return http_response("200 OK", {**common, "Content-Length": str(len(data))}, data)
        first, _, last = spec.removeprefix("bytes=").partition("-")
        start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
        return http_response("206 Partial Content", {
            **common, "Content-Length": str(end - start + 1),
            "Content-Range": f"bytes {start}-{end}/{len(data)}"}, data[start:end + 1])
    return respond


class HostilePeer:
    """An HTTP server that answers each request with ``respond(target, headers, digest)``.

    ``digest`` is the last path segment (the blob or manifest asked for); ``headers``
    have lower-case names. After writing, the connection stays open for
    ``hold_open`` seconds (a peer that stalls) before it is closed.
    """

    def __init__(self, respond: Respond, *, host: str = "127.0.0.1", port: int = 0,
                 hold_open: float = 0.0) -> None:
        _check_loopback(host)
        self.respond = respond
        self.host, self.port = host, port
        self.hold_open = hold_open
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._server: asyncio.Server | None = None
        self._closing = asyncio.Event()

    async def start(self) -> Peer:
        """Listen; returns the peer as a router would give it."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return Peer(self.host, self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            target = head[0].split(" ")[1]
            headers = {name.strip().lower(): value.strip() for name, _, value in
                       (line.partition(":") for line in head[1:] if line)}
            self.requests.append((target, headers))
            digest = target.split("?")[0].rsplit("/", 1)[-1]
            writer.write(self.respond(target, headers, digest))
            await writer.drain()
            if self.hold_open:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), self.hold_open)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
                IndexError):
            pass
        finally:
            writer.close()

    async def aclose(self) -> None:
        """Stop accepting, release connections held open, and close the server; idempotent."""
        self._closing.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


@dataclass(frozen=True)
class RawResponse:
    """What a client received: ``complete`` is False when the body ended early."""

    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool


def raw_get(host: str, port: int, path: str, headers: dict[str, str] | None = None, *,
            timeout: float = 30.0, source: str | None = None) -> RawResponse:
    """GET ``path`` and read to the announced length or until the server closes.

    A connection the server closes or resets early, or one that stalls for ``timeout``
    seconds, gives ``complete=False`` with the bytes received so far.
    """
    _check_loopback(host)
    lines = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{lines}Connection: close\r\n\r\n"
    with socket.create_connection((host, port), timeout=timeout,
                                  source_address=(source, 0) if source else None) as sock:
        sock.sendall(request.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = _recv(sock)
            if not chunk:
                return RawResponse(0, {}, b"", False)
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ")[1])
        got = {name.strip().lower(): value.strip() for name, _, value in
               (line.partition(":") for line in header_lines)}
        length = int(got.get("content-length", "-1"))
        parts = [body]
        received = len(body)
        while length < 0 or received < length:
            chunk = _recv(sock)
            if not chunk:
                break
            parts.append(chunk)
            received += len(chunk)
    body = b"".join(parts)
    return RawResponse(status, got, body, length < 0 or len(body) == length)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1 << 20)
    except (ConnectionResetError, TimeoutError):
        return b""


class SeedDiscovery:
    """A :class:`~spegel_core.protocols.Discovery` of fixed ``host:port`` router addresses."""

    name = "seeds"
    refresh_interval = 60.0

    def __init__(self, addresses: Sequence[tuple[str, int]]) -> None:
        self.addresses = [PeerAddress(host, port) for host, port in addresses]

    async def bootstrap_peers(self) -> list[PeerAddress]:
        """The fixed addresses (a new list each call)."""
        return list(self.addresses)

    async def aclose(self) -> None:
        """Nothing to release."""
        pass
