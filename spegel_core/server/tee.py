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

While fewer verified streams run than the process has cores
(:data:`~spegel_core.server.tee_stream.HASH_THREAD_BELOW`), a stream hashes in a
second thread instead: the mover hands it each turn's byte count and waits only until
it has read ``hash`` empty, so the hash of one pipeful overlaps the moves of the next
(faster for a lone stream, about 0.1 CPU-s/GB dearer; with more streams than cores
every core is busy anyway and the stream hashes in turn, the cheapest way). The thread
itself is in :mod:`spegel_core.server.tee_stream`.

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
import errno
import fcntl
import hashlib
import logging
import os
import threading

from spegel_core.server.splice import AVAILABLE as SPLICE_AVAILABLE
from spegel_core.server.splice import SpliceResult
from spegel_core.server.tee_stream import TEE_AVAILABLE, TeeStream
from spegel_core.server.tee_stream import tee as tee

#: Whether this platform can hash a spliced stream (``os.splice``, libc's ``tee``, eventfd).
AVAILABLE = SPLICE_AVAILABLE and TEE_AVAILABLE and hasattr(os, "eventfd")

log = logging.getLogger(__name__)

_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
#: Pipe capacity asked for per stream (one turn of the thread moves at most this much).
#: Above ``/proc/sys/fs/pipe-max-size`` (1 MiB by default) only for privileged
#: processes; the tap takes what the kernel grants.
STREAM_PIPE_SIZE = 1024 * 1024


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
    stream = TeeStream(tap, source_fd, destination_fd, count, source_timeout,
                     destination_timeout)
    thread = threading.Thread(target=stream.run, args=(loop, future), name="spegel-tee",
                              daemon=True)
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


