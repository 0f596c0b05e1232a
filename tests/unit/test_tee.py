"""``splice_tee`` and ``HashTap`` on real connected sockets: hashed, held back, resumable."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
from collections.abc import Iterator

import pytest

from spegel_core.server import tee, tee_stream
from spegel_core.server.splice import Stop
from spegel_core.server.tee import HashTap, splice_tee

pytestmark = pytest.mark.skipif(not tee.AVAILABLE, reason="no splice(2)/tee(2) here")

Pairs = tuple[socket.socket, socket.socket, socket.socket, socket.socket]


@pytest.fixture(autouse=True, params=["in turn", "hash thread"])
def hashing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test in both ways a stream hashes: in its own thread's turns, or in a second
    thread (what a stream does while the node has idle cores)."""
    monkeypatch.setattr(tee_stream, "HASH_THREAD_BELOW", 0 if request.param == "in turn" else 10**6)
    return str(request.param)


@pytest.fixture
def pairs() -> Iterator[Pairs]:
    """(peer, source, destination, client): peer writes into source, client reads destination."""
    peer, source = socket.socketpair()
    destination, client = socket.socketpair()
    for sock in (source, destination, client):
        sock.setblocking(False)
    yield peer, source, destination, client
    for sock in (peer, source, destination, client):
        sock.close()


@pytest.fixture
def no_fd_leak() -> Iterator[None]:
    before = len(os.listdir("/proc/self/fd"))
    yield
    after = len(os.listdir("/proc/self/fd"))
    assert after <= before, f"{after - before} descriptors left open"


async def read_exactly(sock: socket.socket, count: int, idle: float = 10) -> bytes:
    """Up to ``count`` bytes: fewer when the socket closes or sends nothing for ``idle`` s."""
    loop = asyncio.get_running_loop()
    data = bytearray()
    while len(data) < count:
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, count - len(data)), idle)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_the_body_is_hashed_and_its_end_held_until_asked(pairs: Pairs,
                                                                no_fd_leak: None) -> None:
    peer, source, destination, client = pairs
    body = os.urandom(5 * 2**20 + 123)
    loop = asyncio.get_running_loop()
    writer = loop.run_in_executor(None, peer.sendall, body + b"next response")
    reader = asyncio.ensure_future(read_exactly(client, len(body) - 1))
    tap = HashTap(len(body), "sha256")
    try:
        tap.feed(b"")
        result = await splice_tee(source.fileno(), destination.fileno(), len(body), tap,
                                  source_timeout=5, destination_timeout=5)
        await writer
        assert (result.moved, result.stop) == (len(body) - 1, Stop.DONE)
        assert tap.taken == len(body) and tap.delivered == len(body) - 1
        assert await reader == body[:-1]  # all but the held byte
        assert await tap.hexdigest() == sha256(body)
        assert tap.held() == body[-1:]
        assert await read_exactly(source, 13) == b"next response"  # never a byte past count
    finally:
        tap.close()


async def test_a_wrong_body_never_reaches_its_end(pairs: Pairs) -> None:
    peer, source, destination, client = pairs
    body = os.urandom(3 * 2**20)
    wrong = bytes(b ^ 0x5A for b in body[:512]) + body[512:]
    loop = asyncio.get_running_loop()
    writer = loop.run_in_executor(None, peer.sendall, wrong)
    reader = asyncio.ensure_future(read_exactly(client, len(body), idle=1))
    tap = HashTap(len(body), "sha256")
    try:
        result = await splice_tee(source.fileno(), destination.fileno(), len(body), tap,
                                  source_timeout=5, destination_timeout=5)
        await writer
        assert result.stop is Stop.DONE
        assert await tap.hexdigest() != sha256(body)
    finally:
        tap.close()  # the caller's answer to a mismatch: the held tail is never sent
    destination.close()
    received = await reader
    assert len(received) == len(body) - 1 and received == wrong[:-1]


async def test_fed_bytes_come_first_and_a_body_may_be_all_fed(pairs: Pairs) -> None:
    _, _, destination, client = pairs
    body = os.urandom(2**20 + 7)
    tap = HashTap(len(body), "sha512", hold=4096)
    try:
        tap.feed(body)
        reader = asyncio.ensure_future(read_exactly(client, len(body) - 4096))
        result = await splice_tee(-1, destination.fileno(), len(body), tap,
                                  source_timeout=5, destination_timeout=5)
        assert (result.moved, result.stop) == (len(body) - 4096, Stop.DONE)
        assert await reader == body[:-4096]
        assert await tap.hexdigest() == hashlib.sha512(body).hexdigest()
        assert tap.held() == body[-4096:]
    finally:
        tap.close()


async def test_a_short_body_resumes_from_another_source_and_the_hash_goes_on(
    pairs: Pairs, no_fd_leak: None
) -> None:
    peer, source, destination, client = pairs
    body = os.urandom(4 * 2**20 + 5)
    cut = 1_500_000
    loop = asyncio.get_running_loop()

    def send_short() -> None:
        peer.sendall(body[:cut])
        peer.shutdown(socket.SHUT_WR)  # the first peer stops short

    sender = loop.run_in_executor(None, send_short)
    reader = asyncio.ensure_future(read_exactly(client, len(body) - 1))
    tap = HashTap(len(body), "sha256")
    try:
        first = await splice_tee(source.fileno(), destination.fileno(), len(body), tap,
                                 source_timeout=5, destination_timeout=5)
        await sender
        assert first.stop is Stop.SOURCE_ENDED and tap.taken == cut
        assert first.moved == cut  # what came in went out (the end is further on)
        assert await tap.hexdigest() is None  # not the whole body: no digest
        other, resumed = socket.socketpair()
        with other, resumed:
            resumed.setblocking(False)
            tap.feed(body[cut: cut + 1000])  # the new answer's buffered part
            writer = loop.run_in_executor(None, other.sendall, body[cut + 1000:])
            second = await splice_tee(resumed.fileno(), destination.fileno(),
                                      len(body) - tap.taken, tap,
                                      source_timeout=5, destination_timeout=5)
            await writer
        assert second.stop is Stop.DONE and tap.taken == len(body)
        assert await tap.hexdigest() == sha256(body)
        assert await reader == body[:-1]
        assert tap.held() == body[-1:]
    finally:
        tap.close()


async def test_a_stalled_source_times_out_with_what_it_sent_taken(pairs: Pairs) -> None:
    peer, source, destination, client = pairs
    peer.sendall(b"y" * 100_000)
    tap = HashTap(200_000, "sha256")
    try:
        result = await splice_tee(source.fileno(), destination.fileno(), 200_000, tap,
                                  source_timeout=0.2, destination_timeout=5)
        assert (result.moved, result.stop) == (100_000, Stop.SOURCE_STALLED)
        assert tap.taken == 100_000
        assert await read_exactly(client, 100_000) == b"y" * 100_000
    finally:
        tap.close()


#: The names of a stream's threads: the one that runs it and, while cores are idle, the
#: one that hashes for it.
STREAM_THREADS = ("spegel-tee", "spegel-hash")


class RecordedThread(threading.Thread):
    """A thread that lists itself when started (a stream's threads, seen from outside)."""

    started: list[threading.Thread] = []

    def start(self) -> None:
        RecordedThread.started.append(self)
        super().start()


async def test_a_client_that_goes_away_ends_the_stream_and_the_thread(
        pairs: Pairs, no_fd_leak: None, monkeypatch: pytest.MonkeyPatch) -> None:
    peer, source, destination, client = pairs
    client.close()
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(threading, "Thread", RecordedThread)
    RecordedThread.started.clear()
    writer = loop.run_in_executor(None, peer.sendall, b"z" * 4 * 2**20)
    tap = HashTap(4 * 2**20, "sha256")
    try:
        result = await splice_tee(source.fileno(), destination.fileno(), 4 * 2**20, tap,
                                  source_timeout=5, destination_timeout=5)
        assert result.stop is Stop.DESTINATION_GONE and result.moved < 4 * 2**20
    finally:
        tap.close()
    source.shutdown(socket.SHUT_RDWR)  # unblocks the writer
    await asyncio.wait([writer])
    threads = [t for t in RecordedThread.started if t.name in STREAM_THREADS]
    assert threads  # the stream's thread, and its hashing thread if it had one
    for thread in threads:
        await loop.run_in_executor(None, thread.join, 10)
        assert not thread.is_alive()


async def test_a_client_that_stops_reading_times_out(pairs: Pairs) -> None:
    peer, source, destination, _ = pairs
    loop = asyncio.get_running_loop()
    writer = loop.run_in_executor(None, peer.sendall, b"w" * 16 * 2**20)
    tap = HashTap(16 * 2**20, "sha256")
    try:
        result = await splice_tee(source.fileno(), destination.fileno(), 16 * 2**20, tap,
                                  source_timeout=5, destination_timeout=0.3)
        assert result.stop is Stop.DESTINATION_GONE and result.detail == "stopped reading"
        assert 0 < result.moved < 16 * 2**20
    finally:
        tap.close()
    source.shutdown(socket.SHUT_RDWR)
    await asyncio.wait([writer])


def test_a_tap_needs_a_body() -> None:
    with pytest.raises(ValueError):
        HashTap(0, "sha256")


async def test_over_tcp_the_tail_below_the_low_water_mark_is_not_waited_for() -> None:
    """Over TCP a source wakes the loop only with ``SOURCE_LOWAT`` bytes queued (near the
    end, what is left of the body): a body whose tail is below the mark, from a peer
    that keeps its connection open after it (keep-alive), still completes, exactly."""
    listener = socket.create_server(("127.0.0.1", 0))
    peer = socket.create_connection(listener.getsockname())
    source, _ = listener.accept()
    destination, client = socket.socketpair()
    body = os.urandom(3 * 2**20 + 1000)
    tap = HashTap(len(body), "sha256")
    try:
        for sock in (source, destination, client):
            sock.setblocking(False)
        loop = asyncio.get_running_loop()
        writer = loop.run_in_executor(None, peer.sendall, body)  # then stays open
        reader = asyncio.ensure_future(read_exactly(client, len(body) - 1))
        result = await splice_tee(source.fileno(), destination.fileno(), len(body), tap,
                                  source_timeout=5, destination_timeout=5)
        await writer
        assert (result.moved, result.stop) == (len(body) - 1, Stop.DONE)
        assert await tap.hexdigest() == sha256(body) and await reader == body[:-1]
    finally:
        tap.close()
        for sock in (listener, peer, source, destination, client):
            sock.close()


async def test_a_cancelled_stream_ends_its_thread_before_the_descriptors_are_released(
    pairs: Pairs, no_fd_leak: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller closes the sockets once ``splice_tee`` returns, even by cancellation:
    the stream's threads are gone by then (they never touch a reused descriptor)."""
    peer, source, destination, client = pairs
    monkeypatch.setattr(threading, "Thread", RecordedThread)
    RecordedThread.started.clear()
    peer.sendall(b"c" * 100_000)  # then the source goes quiet
    tap = HashTap(10 * 2**20, "sha256")
    try:
        task = asyncio.ensure_future(splice_tee(source.fileno(), destination.fileno(),
                                                10 * 2**20, tap, source_timeout=30,
                                                destination_timeout=30))
        assert await read_exactly(client, 100_000) == b"c" * 100_000  # it is running
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        threads = [t for t in RecordedThread.started if t.name in STREAM_THREADS]
        assert threads and not any(t.is_alive() for t in threads)  # no join: already gone
        assert tap.taken == 100_000 and await tap.hexdigest() is None
    finally:
        tap.close()


async def test_a_tap_runs_one_stream_at_a_time_and_none_once_closed(pairs: Pairs) -> None:
    peer, source, destination, _ = pairs
    tap = HashTap(2**20, "sha256")
    try:
        first = asyncio.ensure_future(splice_tee(source.fileno(), destination.fileno(),
                                                 2**20, tap, source_timeout=30,
                                                 destination_timeout=30))
        await asyncio.sleep(0)  # the first stream has started
        with pytest.raises(RuntimeError):
            await splice_tee(source.fileno(), destination.fileno(), 2**20, tap,
                             source_timeout=1, destination_timeout=1)
        tap.close()  # stops the running stream; its thread releases the pipes
        result = await asyncio.wait_for(first, 10)
        assert result.stop is Stop.DESTINATION_GONE and result.detail == "stopped"
        with pytest.raises(RuntimeError):
            await splice_tee(source.fileno(), destination.fileno(), 2**20, tap,
                             source_timeout=1, destination_timeout=1)
    finally:
        tap.close()
        peer.close()


async def test_a_body_larger_than_many_pipefuls_is_hashed_exactly(pairs: Pairs) -> None:
    """Many turns, the hold straddling two of them (the last pipeful is short)."""
    peer, source, destination, client = pairs
    tap = HashTap(9 * 2**20 + 10, "sha256", hold=tee.STREAM_PIPE_SIZE // 2 + 3)
    body = os.urandom(tap.length)
    loop = asyncio.get_running_loop()
    writer = loop.run_in_executor(None, peer.sendall, body)
    reader = asyncio.ensure_future(read_exactly(client, tap.limit))
    try:
        result = await splice_tee(source.fileno(), destination.fileno(), tap.length, tap,
                                  source_timeout=5, destination_timeout=5)
        await writer
        assert (result.moved, result.stop) == (tap.limit, Stop.DONE)
        assert await reader == body[: tap.limit]
        assert await tap.hexdigest() == sha256(body)
        assert tap.held() == body[tap.limit:] and tap.delivered == tap.length
    finally:
        tap.close()


async def test_a_tap_that_fails_ends_the_stream_as_cut_off_not_with_a_traceback(
    pairs: Pairs, monkeypatch: pytest.MonkeyPatch, no_fd_leak: None
) -> None:
    """``tee(2)`` failing mid-body: the stream reports the destination gone (the server
    closes the client's connection short of the body), and the digest is never given."""
    peer, source, destination, client = pairs
    calls = 0
    real_tee = tee_stream.tee

    def failing_tee(fd_in: int, fd_out: int, length: int) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError(5, "Input/output error")
        return real_tee(fd_in, fd_out, length)

    monkeypatch.setattr(tee_stream, "tee", failing_tee)
    tap = HashTap(3 * 2**20, "sha256")
    try:
        writer = asyncio.get_running_loop().run_in_executor(None, peer.sendall,
                                                            b"g" * 3 * 2**20)
        reader = asyncio.ensure_future(read_exactly(client, tap.length, idle=1))
        result = await splice_tee(source.fileno(), destination.fileno(), tap.length, tap,
                                  source_timeout=5, destination_timeout=5)
        assert result.stop is Stop.DESTINATION_GONE and result.detail.startswith("tap failed")
        assert calls == 2 and await tap.hexdigest() is None
    finally:
        tap.close()
    source.shutdown(socket.SHUT_RDWR)  # unblocks the writer
    await asyncio.wait([writer])
    destination.close()
    assert len(await reader) < tap.length  # never the whole body
