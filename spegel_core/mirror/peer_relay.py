"""Relaying a peer's answer socket to socket: the body never enters Python.

Used for bodies the mirror does not hash (ranges of part of a blob, and whole blobs with
``--peer-blob-verify client``), and, hashed on the way with ``tee(2)``
(:func:`relay_verified`, :mod:`spegel_core.server.tee`), for the whole blobs the mirror
verifies (``--peer-blob-verify mirror``, the default). aiohttp sends the request and
parses the answer's head (the checks of :mod:`spegel_core.mirror.peers` run on it as on
every answer); then the connection is taken from aiohttp: reading is paused, the body
bytes aiohttp already buffered are kept, and a private duplicate of the socket's
descriptor is all that remains of the connection. The server splices the rest of the
body from that descriptor to the client (:mod:`spegel_core.server.splice`).

Exactly the announced length is taken from the peer, never a byte more. A peer
that closes, fails or stalls before that is penalised and the stream resumes from
another provider with ``Range: bytes=<position>-``; with no provider left the
relay raises :class:`~spegel_core.errors.PeerError` and the client's connection
is closed: a short body is never completed as a whole response.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiohttp

from spegel_core.errors import PeerDigestMismatch, PeerError, PeerStreamBroken
from spegel_core.mirror.responses import SpliceSink
from spegel_core.oci.digest import split_digest
from spegel_core.server.tee import HashTap

if TYPE_CHECKING:
    from spegel_core.mirror.blob_stream import BlobStream, Resumer
    from spegel_core.protocols import Peer


def take_socket(response: aiohttp.ClientResponse) -> tuple[int | None, bytes]:
    """Detach the socket of ``response`` from aiohttp: (a private descriptor, bytes read).

    The bytes are the body aiohttp had already read with the head; when that is the
    whole body, aiohttp has already let go of the connection (back to its pool) and
    the descriptor is None. Otherwise the response is closed (its connection is not
    reused) and the descriptor stays open until the caller closes it. Raises
    :class:`~spegel_core.errors.PeerStreamBroken` when the connection failed before
    its bytes could be taken.
    """
    try:
        # Drain aiohttp's buffer until it stays empty: a read can resume a parser that
        # paused on a full buffer, which parses the bytes it held back into the buffer
        # at once (and may complete the body, releasing the connection to the pool).
        parts: list[bytes] = []
        while chunk := response.content.read_nowait(-1):
            parts.append(chunk)
        connection = response.connection
        transport = connection.transport if connection is not None else None
        if transport is None:  # the body is complete in what was drained
            return None, b"".join(parts)
        sock = transport.get_extra_info("socket")
        if sock is None or transport.is_closing():
            raise PeerStreamBroken("the peer's connection closed")
        # No callback runs from the drain to here, so nothing more reaches aiohttp:
        # what the peer sends from now on stays in the socket for the splice.
        transport.pause_reading()
        return os.dup(sock.fileno()), b"".join(parts)
    except (aiohttp.ClientError, OSError, RuntimeError, TimeoutError) as exc:
        raise PeerStreamBroken(f"{type(exc).__name__}: {exc}") from exc
    finally:
        response.close()


#: Moves one peer's body on: given its descriptor (None when aiohttp had read it all)
#: and the bytes already read, sends what it can; returns why it stopped short ("").
Pump = Callable[[int | None, bytes], Awaitable[str]]


async def _relay_resuming(fetcher: Resumer, stream: BlobStream,
                          response: aiohttp.ClientResponse, registry: str, name: str,
                          digest: str, pump: Pump, taken: Callable[[], int]) -> Peer:
    """Pump the body of ``stream`` from ``response`` and the providers after it.

    Until ``taken()`` reaches ``stream.length``: a peer that stops short is penalised
    and the body resumes from another provider; with none left the resumer raises
    :class:`PeerError`.

    :returns: the peer that sent the last bytes.
    """
    peer = stream.peer
    try:
        while True:
            why = ""
            try:
                fd, buffered = take_socket(response)
            except PeerError as exc:
                why = str(exc)
            else:
                try:
                    why = await pump(fd, buffered)
                finally:
                    if fd is not None:
                        os.close(fd)
            if taken() >= stream.length:
                return peer
            fetcher.penalise(peer, PeerStreamBroken(
                f"stream broke after {taken()} of {stream.length} bytes: {why}"), digest)
            response, peer = await fetcher.resume(registry, name, digest,
                                                  stream.start + taken(),
                                                  stream.start + stream.length - 1, stream)
    finally:
        response.close()


async def relay_blob(fetcher: Resumer, stream: BlobStream,
                     response: aiohttp.ClientResponse, registry: str, name: str, digest: str,
                     sink: SpliceSink) -> None:
    """Send the body of ``stream`` (``stream.length`` bytes) through ``sink``.

    Resumes from other providers when a peer stops short; raises :class:`PeerError`
    when none is left, and lets :class:`~spegel_core.mirror.responses.ClientGone`
    through when the client stops.
    """
    sent = 0

    async def pump(fd: int | None, buffered: bytes) -> str:
        nonlocal sent
        part = buffered[: stream.length - sent]
        if part:
            await sink.write(part)
            sent += len(part)
        if sent >= stream.length:
            return ""
        if fd is None:
            return "the body ended early"
        moved, why = await sink.splice(fd, stream.length - sent)
        sent += moved
        return why

    await _relay_resuming(fetcher, stream, response, registry, name, digest, pump,
                          lambda: sent)


async def relay_verified(fetcher: Resumer, stream: BlobStream,
                         response: aiohttp.ClientResponse, registry: str, name: str,
                         digest: str, sink: SpliceSink) -> None:
    """Send the body of ``stream`` through ``sink``, hashed on the way.

    The body is completed only if it matches ``digest``.

    The body goes socket to socket through a :class:`~spegel_core.server.tee.HashTap`,
    which keeps its last byte back; that byte is sent once the digest matched. A peer
    that stops short is penalised and the stream resumes from another provider (the
    hash goes on where it stopped); with none left, or when the digest does not match
    (the last peer is penalised), :class:`PeerError` is raised and the client's
    connection is closed short of the body. :class:`~spegel_core.mirror.responses.
    ClientGone` passes through when the client stops.
    """
    tap = HashTap(stream.length, split_digest(digest)[0])

    async def pump(fd: int | None, buffered: bytes) -> str:
        tap.feed(buffered[: stream.length - tap.taken])
        _, why = await sink.splice(-1 if fd is None else fd, stream.length - tap.taken, tap)
        return why

    try:
        peer = await _relay_resuming(fetcher, stream, response, registry, name, digest,
                                     pump, lambda: tap.taken)
        actual = await tap.hexdigest()
        if actual is None:  # the hashing thread failed: nobody to blame, nothing to send
            raise PeerStreamBroken(f"blob {digest} could not be hashed")
        if f"{split_digest(digest)[0]}:{actual}" != digest:
            mismatch = PeerDigestMismatch(f"blob {digest} from {peer.url} does not match "
                                          "its digest")
            fetcher.penalise(peer, mismatch, digest)
            raise mismatch
        await sink.write(tap.held())
    finally:
        tap.close()
