"""A verified body's state on its way through the hop: :class:`HashTap`.

Its two pipes (``in``, ``hash``), its hash object, the held tail and the stop event
that :mod:`spegel_core.server.tee_stream`'s thread uses; :mod:`spegel_core.server.tee`
describes the whole and runs streams through it (:func:`~spegel_core.server.tee.
splice_tee`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import threading

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
