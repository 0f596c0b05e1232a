"""``splice_sockets`` on real connected sockets: exact counts, and why it stops."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator

import pytest

from spegel_core.server.splice import Stop, splice_sockets


@pytest.fixture
def pairs() -> Iterator[tuple[socket.socket, socket.socket, socket.socket, socket.socket]]:
    """(peer, source, destination, client): peer writes into source, client reads destination."""
    peer, source = socket.socketpair()
    destination, client = socket.socketpair()
    for sock in (source, destination, client):
        sock.setblocking(False)
    yield peer, source, destination, client
    for sock in (peer, source, destination, client):
        sock.close()


async def read_all(sock: socket.socket, count: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = bytearray()
    while len(data) < count:
        chunk = await loop.sock_recv(sock, count - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


async def test_moves_exactly_count_and_leaves_the_rest(pairs: tuple[socket.socket, ...]) -> None:
    peer, source, destination, client = pairs
    body = os.urandom(3 * 2**20 + 17)
    loop = asyncio.get_running_loop()
    writer = loop.run_in_executor(None, peer.sendall, body + b"next response")
    reader = asyncio.ensure_future(read_all(client, len(body)))
    result = await splice_sockets(source.fileno(), destination.fileno(), len(body),
                                  source_timeout=5, destination_timeout=5)
    await writer
    assert (result.moved, result.stop) == (len(body), Stop.DONE)
    assert await reader == body
    assert await read_all(source, 13) == b"next response"  # never a byte past count


async def test_a_source_that_closes_early_is_reported(pairs: tuple[socket.socket, ...]) -> None:
    peer, source, destination, client = pairs
    peer.sendall(b"x" * 100_000)
    peer.close()
    reader = asyncio.ensure_future(read_all(client, 100_000))
    result = await splice_sockets(source.fileno(), destination.fileno(), 200_000,
                                  source_timeout=5, destination_timeout=5)
    assert (result.moved, result.stop) == (100_000, Stop.SOURCE_ENDED)
    assert await reader == b"x" * 100_000  # what came in went out before it returned


async def test_a_stalled_source_times_out(pairs: tuple[socket.socket, ...]) -> None:
    peer, source, destination, client = pairs
    peer.sendall(b"y" * 1000)
    result = await splice_sockets(source.fileno(), destination.fileno(), 2000,
                                  source_timeout=0.2, destination_timeout=5)
    assert (result.moved, result.stop) == (1000, Stop.SOURCE_STALLED)
    assert await read_all(client, 1000) == b"y" * 1000


async def test_a_destination_that_goes_away_is_reported(
    pairs: tuple[socket.socket, ...]
) -> None:
    peer, source, destination, client = pairs
    client.close()
    loop = asyncio.get_running_loop()
    writer = loop.run_in_executor(None, peer.sendall, b"z" * 2**20)
    result = await splice_sockets(source.fileno(), destination.fileno(), 2**20,
                                  source_timeout=5, destination_timeout=5)
    assert result.stop is Stop.DESTINATION_GONE and result.moved < 2**20
    source.shutdown(socket.SHUT_RDWR)  # unblocks the writer
    await asyncio.wait([writer])


async def test_a_destination_that_stops_reading_times_out(
    pairs: tuple[socket.socket, ...]
) -> None:
    peer, source, destination, _ = pairs
    loop = asyncio.get_running_loop()
    writer = loop.run_in_executor(None, peer.sendall, b"w" * 16 * 2**20)
    result = await splice_sockets(source.fileno(), destination.fileno(), 16 * 2**20,
                                  source_timeout=5, destination_timeout=0.3)
    assert result.stop is Stop.DESTINATION_GONE and result.detail == "stopped reading"
    assert 0 < result.moved < 16 * 2**20
    source.shutdown(socket.SHUT_RDWR)
    await asyncio.wait([writer])
