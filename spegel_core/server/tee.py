"""Socket to socket in the kernel, hashed on the way: ``splice(2)`` plus ``tee(2)``.

The verified peer hop (``--peer-blob-verify mirror``) moves a blob's body from the
peer's socket to the client's socket without it entering Python, and still hashes
every byte. Three pipes per stream::

    peer socket --splice--> in --tee--> hash --read--> hashing thread (reused buffer)
                            in --splice--> out --splice--> client socket

``tee`` duplicates the pages of ``in`` into ``hash`` without consuming them (no
copy); the same bytes are then moved to ``out``, so ``in`` only ever holds bytes not
yet duplicated (``tee`` always starts at the head of a pipe). A thread of the
:class:`HashTap` reads ``hash`` with blocking reads into one reused buffer and feeds
the hash object (``hashlib`` releases the GIL on large updates): the one copy into
user space is the one the hash needs. The event loop only moves page references.

The last :attr:`HashTap.hold` bytes of the body stay in ``out`` until the caller
has compared the digest (:meth:`HashTap.hexdigest`) and takes them
(:meth:`HashTap.held`) to send: a body whose digest does not match is never
completed. A tap lives across sources: when a peer stops short the caller resumes
from another provider at :attr:`HashTap.taken` and calls :func:`splice_tee` again
with the new socket; the hash goes on where it stopped.

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
import socket
import threading
from typing import Any

from spegel_core.server.splice import AVAILABLE as SPLICE_AVAILABLE
from spegel_core.server.splice import PIPE_SIZE, SpliceResult, Stop

log = logging.getLogger(__name__)

_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_NONBLOCK = getattr(os, "SPLICE_F_NONBLOCK", 2)
#: The hashing thread's read size (one reused buffer of this size per stream): a whole
#: pipe, so a hash that is behind frees the pipe (and wakes the loop) once per MiB.
HASH_READ = PIPE_SIZE
#: Bytes a source socket should hold before the loop wakes for it (``SO_RCVLOWAT``):
#: fewer, larger moves. Lowered to what is left of the body near its end, and a wait
#: on a source that is below it ends after :data:`LOWAT_WAIT` to take what is there.
SOURCE_LOWAT = 256 * 1024
LOWAT_WAIT = 0.05
#: Buffers kept for reuse by later streams (the rest are freed).
_POOL_MAX = 16


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
#: Whether this platform can hash a spliced stream (``os.splice`` and libc's ``tee``).
AVAILABLE = SPLICE_AVAILABLE and _tee is not None


def tee(fd_in: int, fd_out: int, length: int) -> int:
    """``tee(2)`` without blocking: duplicate up to ``length`` bytes of pipe ``fd_in``.

    :raises BlockingIOError: ``fd_in`` is empty or ``fd_out`` is full.
    :raises OSError: any other failure (``errno`` set).
    """
    if _tee is None:
        raise OSError(errno.ENOSYS, "tee(2) is not available")
    n = int(_tee(fd_in, fd_out, length, _NONBLOCK))
    if n < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code)) if code != errno.EAGAIN \
            else BlockingIOError(code, os.strerror(code))
    return n


class _BufferPool:
    """Read buffers shared by the hashing threads, so a stream allocates none."""

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


def _pipe(size: int) -> tuple[int, int]:
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    with contextlib.suppress(OSError):  # a smaller pipe only means more wake-ups
        fcntl.fcntl(write_end, _F_SETPIPE_SZ, size)
    return read_end, write_end


class HashTap:
    """One verified body on its way: its pipes, its hashing thread, its held tail.

    :param length: the body's length (bytes the tap takes in, over every source).
    :param algorithm: a :mod:`hashlib` name (``sha256``, ``sha512``).
    :param hold: bytes at the end of the body kept back until :meth:`held` (at least 1).

    :ivar taken: bytes taken from sources so far (where a resumed source starts).
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
        self._in_len = 0  # bytes in the ``in`` pipe
        self._in_teed = 0  # of which, at its head, already duplicated into ``hash``
        self._out_len = 0  # bytes in the ``out`` pipe
        self._fds: list[int] = []
        try:
            self._in_r, self._in_w = self._own(_pipe(PIPE_SIZE))
            self._out_r, self._out_w = self._own(_pipe(PIPE_SIZE))
            self._hash_r, self._hash_w = self._own(_pipe(PIPE_SIZE))
            os.set_blocking(self._hash_r, True)  # the thread blocks on it, not the loop
        except OSError:
            for fd in self._fds:
                os.close(fd)
            raise
        self._fds.remove(self._hash_r)  # the hashing thread closes it when it ends
        self._thread: threading.Thread | None = None
        self._result: asyncio.Future[str | None] | None = None
        self._closed = False

    def _own(self, fds: tuple[int, int]) -> tuple[int, int]:
        self._fds.extend(fds)
        return fds

    @property
    def limit(self) -> int:
        """Bytes that may reach the client before the digest is known to match."""
        return self.length - self.hold

    def feed(self, data: bytes) -> None:
        """Bytes that come before the next source's (a peer's body already buffered)."""
        self._prefix = memoryview(data)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._thread is not None:
            return
        self._result = loop.create_future()
        self._thread = threading.Thread(target=self._hash_loop, args=(loop, self._result),
                                        name="spegel-hash", daemon=True)
        self._thread.start()

    def _hash_loop(self, loop: asyncio.AbstractEventLoop,
                   result: asyncio.Future[str | None]) -> None:
        """The hashing thread: read ``hash`` into a reused buffer until the body is in."""
        buffer = _buffers.take()
        view = memoryview(buffer)
        remaining = self.length
        digest: str | None = None
        try:
            while remaining:
                n = os.readv(self._hash_r, [buffer])
                if n == 0:
                    break  # the tap was closed before the whole body came
                self._hasher.update(buffer if n == len(buffer) else view[:n])
                remaining -= n
            if remaining == 0:
                digest = self._hasher.hexdigest()
        except OSError as exc:
            log.debug("hashing thread stopped: %s", exc)
        finally:
            view.release()
            _buffers.give(buffer)
            os.close(self._hash_r)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_set, result, digest)

    async def hexdigest(self) -> str | None:
        """The body's hex digest once all of it was taken and hashed; None if it was not."""
        if self._result is None or self.taken < self.length:
            return None
        return await self._result

    def held(self) -> bytes:
        """The bytes kept back (call once the digest matched, after the last splice)."""
        parts: list[bytes] = []
        while self._out_len > 0:
            chunk = os.read(self._out_r, self._out_len)
            if not chunk:
                break
            parts.append(chunk)
            self._out_len -= len(chunk)
            self.delivered += len(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Release the pipes; the hashing thread ends (and closes its end) on its own."""
        if self._closed:
            return
        self._closed = True
        for fd in self._fds:  # closing the write end of ``hash`` ends the thread's reads
            os.close(fd)
        if self._thread is None:
            os.close(self._hash_r)


def _set(future: asyncio.Future[str | None], value: str | None) -> None:
    if not future.done():
        future.set_result(value)


async def splice_tee(source_fd: int, destination_fd: int, count: int, tap: HashTap, *,
                     source_timeout: float, destination_timeout: float) -> SpliceResult:
    """Take ``count`` bytes (the tap's fed bytes, then ``source_fd``) through ``tap``.

    Every byte taken is hashed and sent on to ``destination_fd``, except the body's
    last ``tap.hold`` bytes, which stay in the tap. ``source_fd`` -1 means no socket
    (the fed bytes are all there is). ``moved`` counts bytes the destination accepted
    in this call; the stop says why it returned, as :func:`~spegel_core.server.splice.
    splice_sockets` does.
    """
    loop = asyncio.get_running_loop()
    tap._start(loop)
    taken = 0
    moved = 0
    source_stop: tuple[Stop, str] | None = None
    now = loop.time()
    source_idle = destination_idle = now
    prefix = tap._prefix
    tap._prefix = memoryview(b"")
    source = _as_socket(source_fd) if SOURCE_LOWAT > 1 else None
    lowat_set = 1
    try:
        while True:
            progress = False
            source_empty = hash_full = out_full = destination_full = False
            # 1. Into ``in``: the fed bytes first, then the socket's.
            if source_stop is None and taken < count:
                want = count - taken
                try:
                    if prefix:
                        n = os.write(tap._in_w, prefix[:want])
                        prefix = prefix[n:]
                    elif source_fd < 0:
                        n = 0
                        source_stop = (Stop.SOURCE_ENDED, "the body ended early")
                    else:
                        n = os.splice(source_fd, tap._in_w, want, flags=_FLAGS)
                        if n == 0:
                            source_stop = (Stop.SOURCE_ENDED, "closed by the peer")
                except (BlockingIOError, InterruptedError):
                    source_empty = True
                    n = 0
                except OSError as exc:
                    source_stop = (Stop.SOURCE_ENDED, f"{type(exc).__name__}: {exc}")
                    n = 0
                if n:
                    taken += n
                    tap.taken += n
                    tap._in_len += n
                    source_idle = loop.time()
                    progress = True
            # 2. Duplicate what is new in ``in`` into ``hash``, then move it on to ``out``.
            if tap._in_len and not tap._in_teed:
                try:
                    tap._in_teed = tee(tap._in_r, tap._hash_w, tap._in_len)
                except (BlockingIOError, InterruptedError):
                    hash_full = True
                progress = progress or tap._in_teed > 0
            if tap._in_teed:
                try:
                    n = os.splice(tap._in_r, tap._out_w, tap._in_teed, flags=_FLAGS)
                except (BlockingIOError, InterruptedError):
                    out_full = True
                else:
                    tap._in_teed -= n
                    tap._in_len -= n
                    tap._out_len += n
                    progress = True
            # 3. From ``out`` to the client, never past the held tail.
            deliverable = min(tap._out_len, tap.limit - tap.delivered)
            if deliverable > 0:
                try:
                    n = os.splice(tap._out_r, destination_fd, deliverable, flags=_FLAGS)
                except (BlockingIOError, InterruptedError):
                    destination_full = True
                except OSError as exc:
                    return SpliceResult(moved, Stop.DESTINATION_GONE,
                                        f"{type(exc).__name__}: {exc}")
                else:
                    tap._out_len -= n
                    tap.delivered += n
                    moved += n
                    destination_idle = loop.time()
                    deliverable -= n
                    progress = True
            if not tap._in_len and not deliverable and (taken >= count or source_stop):
                if taken >= count:
                    return SpliceResult(moved, Stop.DONE)
                assert source_stop is not None
                return SpliceResult(moved, *source_stop)
            if progress:
                continue
            # Nothing moved: wait for whatever holds the stream up.
            waits: list[tuple[int, bool]] = []
            if destination_full or (out_full and deliverable):
                waits.append((destination_fd, True))
            else:
                destination_idle = loop.time()
            if hash_full:
                waits.append((tap._hash_w, True))
            lowat_wait = False
            if source_empty and not tap._in_len and source_fd >= 0:
                waits.append((source_fd, False))
                if source is not None:
                    lowat = min(SOURCE_LOWAT, count - taken)
                    if lowat != lowat_set:
                        try:
                            source.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
                            lowat_set = lowat
                        except OSError:
                            source = None
                    lowat_wait = lowat_set > 1
            else:
                source_idle = loop.time()
            now = loop.time()
            if now - destination_idle >= destination_timeout:
                return SpliceResult(moved, Stop.DESTINATION_GONE, "stopped reading")
            if now - source_idle >= source_timeout:
                return SpliceResult(moved, Stop.SOURCE_STALLED, f"nothing for {source_timeout:g}s")
            if not waits:  # cannot happen with a hold of one byte; never spin on it
                return SpliceResult(moved, Stop.DESTINATION_GONE, "the tap is stuck")
            limit = min(source_idle + source_timeout, destination_idle + destination_timeout) - now
            await fds_ready(loop, waits, min(limit, LOWAT_WAIT) if lowat_wait else limit)

    finally:
        if source is not None:
            source.detach()  # the descriptor stays the caller's

def _as_socket(fd: int) -> socket.socket | None:
    """A socket object over ``fd`` (not a copy: detach it), or None if it is no socket."""
    if fd < 0:
        return None
    try:
        return socket.socket(fileno=fd)
    except OSError:
        return None


async def fds_ready(loop: asyncio.AbstractEventLoop, waits: list[tuple[int, bool]],
                    limit: float) -> bool:
    """Wait until one of ``waits`` (fd, for writing) is ready; False after ``limit`` s.

    A bare future and one timer (no ``wait_for``): this runs once per wake-up of a stream.
    """
    future: asyncio.Future[bool] = loop.create_future()

    def done(value: bool) -> None:
        if not future.done():
            future.set_result(value)

    timer = loop.call_later(max(limit, 0.0), done, False)
    added: list[tuple[int, bool]] = []
    try:
        for fd, write in waits:
            (loop.add_writer if write else loop.add_reader)(fd, done, True)
            added.append((fd, write))
        return await future
    finally:
        timer.cancel()
        for fd, write in added:
            (loop.remove_writer if write else loop.remove_reader)(fd)
