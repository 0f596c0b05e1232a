"""Socket to socket in the kernel: ``splice(2)`` through a pipe, driven by the event loop.

Bytes go from the source socket into a pipe and from the pipe to the destination
socket without ever entering Python; the loop wakes once per pipe's worth (up to
:data:`PIPE_SIZE`) at most, and sleeps on readiness when either side has to wait.

:func:`splice_sockets` moves at most ``count`` bytes and reports why it stopped, so a
caller can tell a source that ended or stalled (resume it elsewhere) from a
destination that went away (stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: Pipe capacity asked for (the kernel's default is 64 KiB; unprivileged processes
#: may raise it up to ``/proc/sys/fs/pipe-max-size``, 1 MiB by default).
PIPE_SIZE = 1024 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
#: Whether this platform has ``os.splice`` at all (Linux, Python 3.10+).
AVAILABLE = hasattr(os, "splice")


class Stop(enum.Enum):
    """Why :func:`splice_sockets` returned."""

    DONE = "done"  #: ``count`` bytes moved
    SOURCE_ENDED = "source ended"  #: the source closed or failed before ``count`` bytes
    SOURCE_STALLED = "source stalled"  #: nothing to read for ``source_timeout`` seconds
    DESTINATION_GONE = "destination gone"  #: the destination failed or stopped reading


@dataclass(frozen=True, slots=True)
class SpliceResult:
    """What a splice did: bytes ``moved`` and why it stopped."""

    moved: int
    stop: Stop
    detail: str = ""


@dataclass(slots=True)
class SpliceReport:
    """Filled in by the server for an ASGI zero-copy message with a ``socket``."""

    moved: int = 0
    stop: Stop | None = None
    detail: str = ""


async def splice_sockets(source_fd: int, destination_fd: int, count: int, *,
                         source_timeout: float, destination_timeout: float) -> SpliceResult:
    """Move up to ``count`` bytes from ``source_fd`` to ``destination_fd`` (both non-blocking).

    Every byte taken from the source is delivered before this returns, unless the
    destination fails; ``moved`` counts bytes the destination accepted.
    """
    loop = asyncio.get_running_loop()
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):  # a smaller pipe only means more wake-ups
            fcntl.fcntl(write_end, _F_SETPIPE_SZ, PIPE_SIZE)
        moved = 0
        in_pipe = 0
        source_stop: tuple[Stop, str] | None = None
        while moved < count:
            # Fill the pipe while the source has data and there is room.
            while source_stop is None and moved + in_pipe < count:
                try:
                    n = os.splice(source_fd, write_end, count - moved - in_pipe, flags=_FLAGS)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    source_stop = (Stop.SOURCE_ENDED, f"{type(exc).__name__}: {exc}")
                    break
                if n == 0:
                    source_stop = (Stop.SOURCE_ENDED, "closed by the peer")
                    break
                in_pipe += n
            # Drain the pipe into the destination while it takes bytes.
            while in_pipe:
                try:
                    n = os.splice(read_end, destination_fd, in_pipe, flags=_FLAGS)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    return SpliceResult(moved, Stop.DESTINATION_GONE,
                                        f"{type(exc).__name__}: {exc}")
                in_pipe -= n
                moved += n
            if moved >= count:
                break
            if in_pipe:
                if not await fd_ready(loop, destination_fd, write=True,
                                    limit=destination_timeout):
                    return SpliceResult(moved, Stop.DESTINATION_GONE, "stopped reading")
            elif source_stop is not None:
                return SpliceResult(moved, *source_stop)
            elif not await fd_ready(loop, source_fd, write=False, limit=source_timeout):
                return SpliceResult(moved, Stop.SOURCE_STALLED,
                                    f"nothing for {source_timeout:g}s")
        return SpliceResult(moved, Stop.DONE)
    finally:
        os.close(read_end)
        os.close(write_end)


async def fd_ready(loop: asyncio.AbstractEventLoop, fd: int, *, write: bool,
                   limit: float) -> bool:
    """Wait until ``fd`` is readable (or writable); False after ``limit`` seconds."""
    future: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not future.done():
            future.set_result(None)

    add, remove = (loop.add_writer, loop.remove_writer) if write else (loop.add_reader,
                                                                      loop.remove_reader)
    add(fd, ready)
    try:
        await asyncio.wait_for(future, limit)
    except TimeoutError:
        return False
    finally:
        remove(fd)
    return True
