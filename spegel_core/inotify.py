"""Linux inotify for asyncio, through ``ctypes`` (no extra dependency).

One :class:`Inotify` owns one inotify descriptor, read by the event loop
(``loop.add_reader``): a process that waits for file changes costs nothing while
nothing changes. Watches are added per directory with a callback that receives
each :class:`InotifyEvent` for that directory.

On platforms without inotify (:data:`AVAILABLE` is False) :class:`Inotify`
raises :class:`InotifyUnavailable` at construction; callers decline the feature.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

__all__ = [
    "AVAILABLE",
    "IN_ATTRIB",
    "IN_CLOSE_WRITE",
    "IN_CREATE",
    "IN_DELETE",
    "IN_DELETE_SELF",
    "IN_IGNORED",
    "IN_ISDIR",
    "IN_MODIFY",
    "IN_MOVED_FROM",
    "IN_MOVED_TO",
    "IN_MOVE_SELF",
    "IN_OPEN",
    "IN_Q_OVERFLOW",
    "Inotify",
    "InotifyEvent",
    "InotifyUnavailable",
]

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_OPEN = 0x00000020
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_HEADER = struct.Struct("iIII")
_READ_SIZE = 64 * 1024


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    if not all(hasattr(libc, name) for name in ("inotify_init1", "inotify_add_watch",
                                                 "inotify_rm_watch")):
        return None
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


_LIBC = _libc()
#: Whether inotify can be used here (Linux with a C library that has it).
AVAILABLE = _LIBC is not None


class InotifyUnavailable(OSError):
    """inotify cannot be used (not Linux, or out of instances or watches)."""


@dataclass(frozen=True, slots=True)
class InotifyEvent:
    """One event: ``mask`` bits and the ``name`` of the entry in the watched directory.

    ``name`` is "" for events about the directory itself.
    """

    mask: int
    name: str

    @property
    def is_dir(self) -> bool:
        """Whether the entry is a directory (``IN_ISDIR``)."""
        return bool(self.mask & IN_ISDIR)


Callback = Callable[[InotifyEvent], None]


class Inotify:
    """An inotify descriptor read by the running event loop.

    :param overflow: called when the kernel's queue overflowed (events were lost);
        the owner should rescan what it watches.
    """

    def __init__(self, overflow: Callable[[], None] | None = None) -> None:
        if _LIBC is None:
            raise InotifyUnavailable("inotify is not available on this platform")
        fd = _LIBC.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise InotifyUnavailable(code, f"inotify_init1: {os.strerror(code)}")
        self.fd: int = fd
        self._overflow = overflow
        self._callbacks: dict[int, Callback] = {}
        self._paths: dict[int, str] = {}
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.fd, self._readable)
        self._closed = False

    def watch(self, path: str | os.PathLike[str], mask: int, callback: Callback) -> int:
        """Watch directory ``path`` for ``mask``; returns the watch descriptor.

        Raises ``FileNotFoundError`` when the directory is gone, and
        :class:`InotifyUnavailable` when the watch limit is reached.
        """
        assert _LIBC is not None
        wd = _LIBC.inotify_add_watch(self.fd, os.fsencode(path), mask | IN_ONLYDIR)
        if wd < 0:
            code = ctypes.get_errno()
            if code in (errno.ENOENT, errno.ENOTDIR):
                raise FileNotFoundError(code, os.strerror(code), str(path))
            raise InotifyUnavailable(code, f"inotify_add_watch {path}: {os.strerror(code)}")
        self._callbacks[wd] = callback
        self._paths[wd] = str(path)
        return int(wd)

    def unwatch(self, wd: int) -> None:
        """Remove a watch (no error if the kernel already dropped it)."""
        assert _LIBC is not None
        if self._callbacks.pop(wd, None) is not None and not self._closed:
            _LIBC.inotify_rm_watch(self.fd, wd)
        self._paths.pop(wd, None)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            log.exception("reading inotify events failed")
            return
        offset = 0
        while offset + _HEADER.size <= len(data):
            wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
            offset += _HEADER.size
            raw = data[offset:offset + length]
            offset += length
            if mask & IN_Q_OVERFLOW:
                log.warning("inotify queue overflowed; rescanning")
                if self._overflow is not None:
                    self._overflow()
                continue
            callback = self._callbacks.get(wd)
            if mask & IN_IGNORED:
                self._callbacks.pop(wd, None)
                self._paths.pop(wd, None)
            if callback is None:
                continue
            name = os.fsdecode(raw.split(b"\0", 1)[0])
            try:
                callback(InotifyEvent(mask, name))
            except Exception:  # a listener must not stop the reader
                log.exception("inotify callback for %s failed", self._paths.get(wd, "?"))

    @property
    def watches(self) -> int:
        """How many paths are watched."""
        return len(self._callbacks)

    def close(self) -> None:
        """Stop reading and close the descriptor; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self.fd)
        os.close(self.fd)
        self._callbacks.clear()
        self._paths.clear()

    def __repr__(self) -> str:
        return f"<Inotify fd={self.fd} watches={len(self._callbacks)} closed={self._closed}>"
