"""The thread that runs one source's part of a tapped body (:mod:`spegel_core.server.tee`).

The tap itself (pipes, hash, held tail) is :class:`~spegel_core.server.tee_tap.HashTap`.

:class:`TeeStream` fills the tap's ``in`` pipe from the source, duplicates it into
``hash`` with ``tee(2)``, splices it on to the client and hashes it, one pipeful per
turn, with blocking calls (``poll(2)`` when a socket holds it up); the hashing is done
in turn (:class:`_InlineHasher`) or, while cores are idle, by a second thread
(:class:`_ThreadHasher`). Also here: libc's ``tee`` through ``ctypes``, and the pool
of read buffers the streams share.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import queue
import select
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from spegel_core.server.splice import SpliceResult, Stop

if TYPE_CHECKING:
    from spegel_core.server.tee_tap import HashTap

log = logging.getLogger(__name__)

_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_NONBLOCK = getattr(os, "SPLICE_F_NONBLOCK", 2)
#: The hashing read size (one reused buffer of this size per running stream).
HASH_READ = 1024 * 1024
#: Bytes a TCP source should hold before ``poll`` wakes the thread for it
#: (``SO_RCVLOWAT``): fewer, larger turns. Lowered to what is left of the body near its
#: end, and a wait on a source below it ends after :data:`LOWAT_WAIT` to take what is there.
SOURCE_LOWAT = 256 * 1024
LOWAT_WAIT = 0.05
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
#: Whether libc has ``tee``.
TEE_AVAILABLE = _tee is not None


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


class TeeStream:
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
        try:
            hasher = (_ThreadHasher if threaded else _InlineHasher)(self.tap)
            try:
                result = self._stream(hasher)
            finally:
                hasher.finish()
        except OSError as exc:  # the tap's own pipes failed: the body cannot complete
            log.warning("verified stream stopped after %d bytes: %s", self.tap.taken, exc)
            result = SpliceResult(self.moved, Stop.DESTINATION_GONE, f"tap failed: {exc}")
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
