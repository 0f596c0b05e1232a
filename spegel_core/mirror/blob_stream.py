"""A blob streamed from peers: the :class:`BlobStream` handle and its verified body.

:func:`stream_body` relays a peer's answer in chunks, hashing them in a worker thread,
and resumes from another provider when the stream breaks. It needs of the fetcher only
what :class:`Resumer` names (penalise a peer, open the rest elsewhere), so this module
and :mod:`spegel_core.mirror.peer_relay` (the socket-to-socket bodies) sit below
:mod:`spegel_core.mirror.peers`, which assembles them.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from spegel_core.errors import (
    PeerDigestMismatch,
    PeerError,
    PeerLengthMismatch,
    PeerStreamBroken,
)
from spegel_core.mirror.peer_checks import transport_error
from spegel_core.mirror.responses import Relay
from spegel_core.oci.digest import split_digest
from spegel_core.protocols import Peer

#: Bytes read from a peer per chunk.
STREAM_CHUNK = 1024 * 1024


@dataclass
class BlobStream:
    """A stream from peers: headers known, the body as chunks or as a relay.

    Use one of ``chunks`` (bytes through Python, hashed when ``verified``) or
    ``relay`` (socket to socket, hashed on the way when ``verified``; servers with
    ``spegel.zerocopy`` only), or neither and :meth:`aclose`.
    """

    size: int
    start: int
    length: int
    chunks: AsyncIterator[bytes]
    peer: Peer
    resumed: list[Peer] = field(default_factory=list)
    verified: bool = False
    relay: Relay | None = None
    response: aiohttp.ClientResponse | None = None

    async def aclose(self) -> None:
        """Close the body unread and release the connection."""
        await self.chunks.aclose()  # type: ignore[attr-defined]
        if self.response is not None:
            self.response.release()


class Resumer(Protocol):
    """What a stream needs of the fetcher when a provider fails mid-way."""

    def penalise(self, peer: Peer, error: PeerError, key: str) -> None:
        """Penalise ``peer`` for ``error`` met while fetching ``key``.

        :param peer: the provider that failed.
        :param error: what went wrong.
        :param key: the digest being fetched.
        """

    async def resume(self, registry: str, name: str, digest: str, position: int, end: int,
                     stream: BlobStream) -> tuple[aiohttp.ClientResponse, Peer]:
        """Open bytes ``position``-``end`` of ``stream`` on a provider not yet asked.

        :param registry: the registry the blob is mirrored for.
        :param name: the repository name.
        :param digest: the blob's digest.
        :param position: first byte wanted.
        :param end: last byte wanted.
        :param stream: the stream to continue.
        :returns: the answer (headers checked) and the provider that gave it.
        :raises PeersExhausted: no provider was left to ask.
        """
        ...


async def stream_body(fetcher: Resumer, stream: BlobStream,
                      response: aiohttp.ClientResponse, registry: str, name: str,
                      digest: str, *, verify: bool) -> AsyncIterator[bytes]:
    """Relay the body, hashing in a worker thread so hashing overlaps the I/O.

    sha256 runs at about 1.2 GB/s on one core here; on the event loop it was the
    bottleneck of the whole hop. ``hashlib`` releases the GIL for large buffers,
    so chunk ``i`` is hashed while chunk ``i - 1`` is sent and ``i + 1`` read.
    The last chunk is only released once the digest is known to match.
    """
    loop = asyncio.get_running_loop()
    hasher = hashlib.new(split_digest(digest)[0]) if verify else None
    hashing: asyncio.Future[None] | None = None
    sent = 0
    held = b""
    peer = stream.peer
    try:
        while True:
            try:
                async for chunk in batched(response.content, STREAM_CHUNK):
                    if sent + len(held) + len(chunk) > stream.length:
                        raise PeerLengthMismatch("peer sent more bytes than announced")
                    if hasher is not None:
                        if hashing is not None:
                            await hashing
                        hashing = loop.run_in_executor(None, hasher.update, chunk)
                    if held:
                        yield held
                        sent += len(held)
                    held = chunk
                if sent + len(held) == stream.length:
                    break
                raise PeerStreamBroken(f"stream ended after {sent + len(held)} bytes")
            except (PeerError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                response.release()
                fetcher.penalise(peer, transport_error(exc, streaming=True), digest)
                position = stream.start + sent + len(held)
                end = stream.start + stream.length - 1
                response, peer = await fetcher.resume(registry, name, digest, position, end,
                                                   stream)
        if hashing is not None:
            await hashing
        if hasher is not None and f"{split_digest(digest)[0]}:{hasher.hexdigest()}" != digest:
            mismatch = PeerDigestMismatch(
                f"blob {digest} from {peer.url} does not match its digest")
            fetcher.penalise(peer, mismatch, digest)
            raise mismatch
        if held:
            yield held
    finally:
        if hashing is not None and not hashing.done():
            await asyncio.wait([hashing])
        response.release()


async def batched(content: aiohttp.StreamReader, size: int) -> AsyncIterator[bytes]:
    """The body in pieces of ``size`` bytes (the last may be shorter), one join each.

    ``readexactly`` joins at most ``size`` bytes; reading whatever is buffered
    (``iter_any``) joined up to the whole buffer (8 MiB) and needed a second join
    here, and those large, varying buffers kept the heap at its high-water mark.
    """
    while True:
        try:
            yield await content.readexactly(size)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                yield exc.partial
            return


async def empty() -> AsyncIterator[bytes]:
    """A body of no chunks (a placeholder until the real one is set)."""
    return
    yield b""
