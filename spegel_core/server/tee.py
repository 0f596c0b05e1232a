"""Socket to socket in the kernel, hashed on the way: ``splice(2)`` plus ``tee(2)``.

The verified peer hop (``--peer-blob-verify mirror``) moves a blob's body from the
peer's socket to the client's socket without it entering Python, and still hashes
every byte. Two pipes per stream, driven by one worker thread with blocking calls::

    peer socket --splice--> in --tee--> hash --read--> reused buffer --> hashlib
                            in --splice--> client socket

Each turn of the thread fills ``in`` (at most a pipeful: :data:`STREAM_PIPE_SIZE`),
duplicates all of it into the empty ``hash`` pipe with ``tee`` (page references, no
copy; ``hash`` has the same capacity, so one ``tee`` takes all), splices it on to the
client, then reads ``hash`` into one reused buffer and feeds the hash object
(``hashlib`` releases the GIL on large updates): the one copy into user space is the
one the hash needs. Both pipes are empty again at the end of each turn. The thread
waits with ``poll(2)`` on whichever socket holds it up (and on a stop event); the
event loop awaits one future per source, never a wake-up per pipeful: handing every
pipeful between the loop and a hashing thread was what kept the earlier design of this
module at half the hash's rate.

The last :attr:`HashTap.hold` bytes of the body are never spliced: the thread reads
them out of ``in`` and keeps them until the caller has compared the digest
(:meth:`HashTap.hexdigest`) and takes them (:meth:`HashTap.held`) to send, so a body
whose digest does not match is never completed. A tap lives across sources: when a
peer stops short the caller resumes from another provider at :attr:`HashTap.taken`
and calls :func:`splice_tee` again with the new socket; the hash goes on where it
stopped.

``os`` has ``splice`` (Python 3.10+) but not ``tee``: it is called from libc
through ``ctypes`` (:data:`AVAILABLE` says whether both exist). Where they do not,
the mirror streams verified bodies through Python as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import logging
import os
import queue
import select
import socket
import threading
import time
from typing import Any

from spegel_core.server.splice import AVAILABLE as SPLICE_AVAILABLE
from spegel_core.server.splice import SpliceResult, Stop

log = logging.getLogger(__name__)

_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_NONBLOCK = getattr(os, "SPLICE_F_NONBLOCK", 2)
#: Pipe capacity asked for per stream (one turn of the thread moves at most this much).
#: Above ``/proc/sys/fs/pipe-max-size`` (1 MiB by default) only for privileged
#: processes; the tap takes what the kernel grants.
STREAM_PIPE_SIZE = 1024 * 1024
#: The hashing read size (one reused buffer of this size per running stream).
HASH_READ = 1024 * 1024
#: Bytes a TCP source should hold before ``poll`` wakes the thread for it
#: (``SO_RCVLOWAT``): fewer, larger turns. Lowered to what is left of the body near its
#: end, and a wait on a source below it ends after :data:`LOWAT_WAIT` to take what is there.
SOURCE_LOWAT = 256 * 1024
LOWAT_WAIT = 0.05
#: Hash in a second thread per stream (overlapped with the moves) rather than in turn.
#: A stream hashes in a second thread only while fewer streams than this run (one core
#: per stream is then idle to overlap the hash with the moves); beyond, in turn.
HASH_THREAD_BELOW = len(os.sched_getaffinity(0))
_streams = 0
_streams_lock = threading.Lock()
#: Buffers kept for reuse by later streams (the rest are freed).
_POOL_MAX = 16
_POLLIN = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP
_POLLOUT = select.POLLOUT | select.POLLERR | select.POLLHUP


def _load_tee() -> Any:
    """Libc's ``tee`` (None where there is none): the process's own symbols, else libc."""
    for name in (None, ctypes.util.find_library("c")):
        try:
            function = ctypes.CDLL(name, use_errno=True).tee
            break
        except (OSError, AttributeError, TypeError):
            continue
    else:
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint)
    function.restype = ctypes.c_ssize_t
    return function


_tee = _load_tee()
#: Whether this platform can hash a spliced stream (``os.splice``, libc's ``tee``, eventfd).
AVAILABLE = SPLICE_AVAILABLE and _tee is not None and hasattr(os, "eventfd")


def tee(fd_in: int, fd_out: int, length: int) -> int:
    """``tee(2)`` without blocking: duplicate up to ``length`` bytes of pipe ``fd_in``.

    :raises BlockingIOError: ``fd_in`` is empty or ``fd_out`` is full.
    :raises OSError: any other failure (``errno`` set).
    """
    if _tee is None:
        raise OSError(errno.ENOSYS, "tee(2) is not available")
    while True:
        n = int(_tee(fd_in, fd_out, length, _NONBLOCK))
        if n >= 0:
            return n
        code = ctypes.get_errno()
        if code == errno.EINTR:
            continue
        raise OSError(code, os.strerror(code)) if code != errno.EAGAIN \
            else BlockingIOError(code, os.strerror(code))


class _BufferPool:
    """Read buffers shared by the streams' threads, so a stream allocates none."""

    def __init__(self, size: int, keep: int) -> None:
        self.size, self.keep = size, keep
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self) -> bytearray:
        with self._lock:
            if self._free:
                return self._free.pop()
        return bytearray(self.size)

    def give(self, buffer: bytearray) -> None:
        with self._lock:
            if len(self._free) < self.keep:
                self._free.append(buffer)


_buffers = _BufferPool(HASH_READ, _POOL_MAX)


def _pipe(size: int) -> tuple[int, int, int]:
    """A non-blocking pipe (read end, write end) of about ``size`` bytes, and its size."""
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    with contextlib.suppress(OSError):  # a smaller pipe only means more, smaller turns
        fcntl.fcntl(write_end, _F_SETPIPE_SZ, size)
    return read_end, write_end, fcntl.fcntl(write_end, _F_GETPIPE_SZ)


class HashTap:
    """One verified body on its way: its pipes, its hash, its held tail.

    :param length: the body's length (bytes the tap takes in, over every source).
    :param algorithm: a :mod:`hashlib` name (``sha256``, ``sha512``).
    :param hold: bytes at the end of the body kept back until :meth:`held` (at least 1).

    :ivar taken: bytes taken from sources (and hashed) so far: where a resumed source
        starts.
    :ivar delivered: bytes sent on to the client so far.
    """

    def __init__(self, length: int, algorithm: str, hold: int = 1) -> None:
        if length <= 0:
            raise ValueError("a tap needs a body of at least one byte")
        self.length = length
        self.hold = max(1, min(hold, length))
        self.taken = 0
        self.delivered = 0
        self._hasher = hashlib.new(algorithm)
        self._prefix = memoryview(b"")
        self._held = bytearray()
        self._fds: list[int] = []
        try:
            self._in_r, self._in_w, size = self._own(_pipe(STREAM_PIPE_SIZE))
            self._hash_r, self._hash_w, hash_size = self._own(_pipe(size))
            if hash_size != size:  # ``tee`` needs room for all of ``in`` at once
                fcntl.fcntl(self._in_w, _F_SETPIPE_SZ, hash_size)
                size = fcntl.fcntl(self._in_w, _F_GETPIPE_SZ)
            if size != hash_size:
                raise OSError(errno.EINVAL, f"pipes of {size} and {hash_size} bytes")
            self._stop = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._fds.append(self._stop)
        except OSError:
            for fd in self._fds:
                os.close(fd)
            raise
        #: Bytes one turn moves: a pipeful (``in`` and ``hash`` are as large).
        self.turn = size
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None  # the stream's thread while it runs
        self._running = False
        self._closed = False
        self._stopping = False  # read by the thread at each turn

    def _own(self, made: tuple[int, int, int]) -> tuple[int, int, int]:
        self._fds.extend(made[:2])
        return made

    def __repr__(self) -> str:
        return (f"<HashTap {self.taken}/{self.length} taken, {self.delivered} delivered"
                f"{', running' if self._running else ''}{', closed' if self._closed else ''}>")

    @property
    def limit(self) -> int:
        """Bytes that may reach the client before the digest is known to match."""
        return self.length - self.hold

    def feed(self, data: bytes) -> None:
        """Bytes that come before the next source's (a peer's body already buffered)."""
        self._prefix = memoryview(data)

    async def hexdigest(self) -> str | None:
        """The body's hex digest once all of it was taken and hashed; None if it was not."""
        if self.taken < self.length or self._running:
            return None
        return self._hasher.hexdigest()

    def held(self) -> bytes:
        """The bytes kept back (call once the digest matched, after the last splice)."""
        held = bytes(self._held)
        self._held.clear()
        self.delivered += len(held)
        return held

    def close(self) -> None:
        """Stop a running stream and release the pipes (its thread does when it ends)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._running:
                self._stop_requested()
                return  # the thread closes the descriptors on its way out
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()

    def _begin(self) -> None:
        with self._lock:
            if self._closed or self._running:
                raise RuntimeError(f"{self!r} cannot start a stream")
            self._running = True

    def _end(self) -> None:
        with self._lock:
            self._running = False
            closed = self._closed
        if closed:
            self._close_fds()

    def _stop_requested(self) -> None:
        self._stopping = True
        os.eventfd_write(self._stop, 1)


async def splice_tee(source_fd: int, destination_fd: int, count: int, tap: HashTap, *,
                     source_timeout: float, destination_timeout: float) -> SpliceResult:
    """Take ``count`` bytes (the tap's fed bytes, then ``source_fd``) through ``tap``.

    Every byte taken is hashed and sent on to ``destination_fd``, except the body's
    last ``tap.hold`` bytes, which stay in the tap. ``source_fd`` -1 means no socket
    (the fed bytes are all there is). Both sockets must be non-blocking. The stream
    runs in a thread of its own; this waits for it once. ``moved`` counts bytes the
    destination accepted in this call; the stop says why it returned, as
    :func:`~spegel_core.server.splice.splice_sockets` does.

    :raises RuntimeError: the tap is closed or already running a stream.
    """
    loop = asyncio.get_running_loop()
    tap._begin()
    future: asyncio.Future[SpliceResult] = loop.create_future()
    stream = _Stream(tap, source_fd, destination_fd, count, source_timeout,
                     destination_timeout)
    thread = threading.Thread(target=stream.run, args=(loop, future), name="spegel-tee",
                              daemon=True)
    tap._thread = thread
    try:
        thread.start()
    except BaseException:
        tap._end()
        raise
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        # The descriptors are the caller's, closed once this returns: the thread must
        # be gone by then. It answers the stop event within one turn.
        tap._stop_requested()
        thread.join()
        raise


class _Stream:
    """One source's part of a tapped body, run by one thread with blocking calls."""

    def __init__(self, tap: HashTap, source_fd: int, destination_fd: int, count: int,
                 source_timeout: float, destination_timeout: float) -> None:
        self.tap = tap
        self.source_fd, self.destination_fd = source_fd, destination_fd
        self.count = count
        self.source_timeout, self.destination_timeout = source_timeout, destination_timeout
        self.taken = self.moved = 0
        self.lowat = 1

    def run(self, loop: asyncio.AbstractEventLoop,
            future: asyncio.Future[SpliceResult]) -> None:
        """The thread's body: the stream, then its result handed to ``future``."""
        result: SpliceResult | BaseException
        global _streams
        with _streams_lock:
            _streams += 1
            threaded = _streams < HASH_THREAD_BELOW
        hasher = (_ThreadHasher if threaded else _InlineHasher)(self.tap)
        try:
            try:
                result = self._stream(hasher)
            finally:
                hasher.finish()
        except BaseException as exc:  # handed to the awaiting task, never lost
            result = exc
        finally:
            with _streams_lock:
                _streams -= 1
            self.tap._end()
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(_settle, future, result)

    def _stream(self, hasher: _InlineHasher) -> SpliceResult:
        tap = self.tap
        prefix, tap._prefix = tap._prefix, memoryview(b"")
        source_stop: tuple[Stop, str] | None = None
        source_poll = select.poll()
        source_poll.register(tap._stop, select.POLLIN)
        if self.source_fd >= 0:
            source_poll.register(self.source_fd, _POLLIN)
        source = _as_socket(self.source_fd) if SOURCE_LOWAT > 1 else None
        try:
            while self.taken < self.count:
                if tap._stopping:
                    return SpliceResult(self.moved, Stop.DESTINATION_GONE, "stopped")
                if source_stop is not None:
                    return SpliceResult(self.moved, *source_stop)
                # 1. Fill ``in``: the fed bytes first, then the socket's.
                n = 0
                if prefix:
                    n = os.write(tap._in_w, prefix[: min(self.count - self.taken, tap.turn)])
                    prefix = prefix[n:]
                elif self.source_fd < 0:
                    source_stop = (Stop.SOURCE_ENDED, "the body ended early")
                else:
                    n, source_stop, stopped = self._fill(source_poll, source)
                    if stopped:
                        return SpliceResult(self.moved, Stop.DESTINATION_GONE, "stopped")
                if not n:
                    continue
                self.taken += n
                # 2. Duplicate it all into ``hash``, send it on, then hash it.
                hasher.before_tee()
                if tee(tap._in_r, tap._hash_w, n) != n:  # both pipes as large: cannot be
                    raise OSError(errno.EIO, "tee(2) duplicated part of a pipe")
                hasher.teed(n)
                deliver = min(n, tap.limit - tap.delivered)
                sent, stop = self._send(deliver, wait=False)
                hasher.sent(n)
                tap.taken += n
                if stop is None and sent < deliver:
                    sent, stop = self._send(deliver - sent, wait=True)
                if stop is not None:
                    return SpliceResult(self.moved, Stop.DESTINATION_GONE, stop)
                if n > deliver:  # the body's end: kept back until the digest matches
                    tap._held += _read_exactly(tap._in_r, n - deliver)
            return SpliceResult(self.moved, Stop.DONE)
        finally:
            if source is not None:
                source.detach()  # the descriptor stays the caller's

    def _fill(self, poller: select.poll, source: socket.socket | None
              ) -> tuple[int, tuple[Stop, str] | None, bool]:
        """Splice what the source has into ``in``: (bytes, why it ended, stop asked)."""
        tap = self.tap
        filled = 0
        room = min(self.count - self.taken, tap.turn)
        idle_since = time.monotonic()
        while filled < room:
            try:
                n = os.splice(self.source_fd, tap._in_w, room - filled, flags=_FLAGS)
            except (BlockingIOError, InterruptedError):
                n = -1
            except OSError as exc:
                return filled, (Stop.SOURCE_ENDED, f"{type(exc).__name__}: {exc}"), False
            if n == 0:
                return filled, (Stop.SOURCE_ENDED, "closed by the peer"), False
            if n > 0:
                filled += n
                continue
            if filled:
                break  # take what came; the rest on the next turn
            # Nothing there: wait for the source (or a stop), bounded by its timeout.
            lowat = self._set_lowat(source, min(SOURCE_LOWAT, self.count - self.taken))
            left = idle_since + self.source_timeout - time.monotonic()
            if left <= 0:
                return 0, (Stop.SOURCE_STALLED, f"nothing for {self.source_timeout:g}s"), False
            events = poller.poll(1000 * (min(left, LOWAT_WAIT) if lowat > 1 else left))
            if any(fd == tap._stop for fd, _ in events):
                return 0, None, True
        return filled, None, False

    def _set_lowat(self, source: socket.socket | None, lowat: int) -> int:
        if source is not None and lowat != self.lowat:
            try:
                source.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
                self.lowat = lowat
            except OSError:
                pass
        return self.lowat

    def _send(self, count: int, *, wait: bool) -> tuple[int, str | None]:
        """Splice ``count`` bytes of ``in`` to the client: (bytes sent, why it failed)."""
        tap = self.tap
        sent = 0
        poller: select.poll | None = None
        idle_since = time.monotonic()
        while sent < count:
            try:
                n = os.splice(tap._in_r, self.destination_fd, count - sent, flags=_FLAGS)
            except (BlockingIOError, InterruptedError):
                if not wait:
                    break
                if poller is None:
                    poller = select.poll()
                    poller.register(self.destination_fd, _POLLOUT)
                    poller.register(tap._stop, select.POLLIN)
                left = idle_since + self.destination_timeout - time.monotonic()
                if left <= 0:
                    return sent, "stopped reading"
                if any(fd == tap._stop for fd, _ in poller.poll(1000 * left)):
                    return sent, "stopped"
                continue
            except OSError as exc:
                return sent, f"{type(exc).__name__}: {exc}"
            sent += n
            tap.delivered += n
            self.moved += n
            idle_since = time.monotonic()
        return sent, None


class _InlineHasher:
    """Hashes each turn in the stream's thread, after the turn's bytes were sent on."""

    def __init__(self, tap: HashTap) -> None:
        self.tap = tap
        self.buffer = _buffers.take()

    def before_tee(self) -> None:
        """Wait until ``hash`` is empty (it always is here)."""

    def teed(self, count: int) -> None:
        """``count`` bytes were duplicated into ``hash``."""

    def sent(self, count: int) -> None:
        """The turn's bytes went on to the client: hash them now."""
        _hash_pipe(self.tap, memoryview(self.buffer), count)

    def finish(self) -> None:
        """The stream ended: give the buffer back."""
        _buffers.give(self.buffer)


class _ThreadHasher(_InlineHasher):
    """Hashes in a second thread, overlapped with the next turn's moves."""

    def __init__(self, tap: HashTap) -> None:
        super().__init__(tap)
        self.drained = threading.Semaphore(1)
        self.counts: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="spegel-hash", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        view = memoryview(self.buffer)
        size = len(view)
        while (count := self.counts.get()) is not None:
            try:
                while count:
                    n = os.readv(self.tap._hash_r, [view[: min(count, size)]])
                    if n <= 0:
                        raise OSError(errno.EIO, "the hash pipe ended early")
                    count -= n
                    if not count:
                        self.drained.release()
                    self.tap._hasher.update(view[:n])
            except BaseException as exc:
                self.error = exc
                self.drained.release()
                return

    def before_tee(self) -> None:
        """Wait until the hashing thread has read all of ``hash``."""
        self.drained.acquire()
        if self.error is not None:
            raise self.error

    def teed(self, count: int) -> None:
        """Hand the hashing thread the turn's ``count`` bytes."""
        self.counts.put(count)

    def sent(self, count: int) -> None:
        """Nothing to do: the hashing thread has them."""

    def finish(self) -> None:
        """Wait for the hashing thread to hash all it was given."""
        self.counts.put(None)
        self.thread.join()
        super().finish()
        if self.error is not None:
            raise self.error


def _hash_pipe(tap: HashTap, buffer: memoryview, count: int) -> None:
    """Read ``count`` bytes of ``hash`` (all there) into ``buffer`` and hash them."""
    size = len(buffer)
    while count:
        n = os.readv(tap._hash_r, [buffer[: min(count, size)]])
        if n <= 0:
            raise OSError(errno.EIO, "the hash pipe ended early")
        tap._hasher.update(buffer[:n])
        count -= n


def _read_exactly(fd: int, count: int) -> bytes:
    """``count`` bytes that are in pipe ``fd`` already."""
    parts = []
    while count:
        chunk = os.read(fd, count)
        if not chunk:
            raise OSError(errno.EIO, "the pipe ended early")
        parts.append(chunk)
        count -= len(chunk)
    return b"".join(parts)


def _settle(future: asyncio.Future[SpliceResult], result: SpliceResult | BaseException
            ) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def _as_socket(fd: int) -> socket.socket | None:
    """A socket object over ``fd`` (not a copy: detach it), or None if it is no socket."""
    if fd < 0:
        return None
    try:
        return socket.socket(fileno=fd)
    except OSError:
        return None
