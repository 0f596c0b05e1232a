"""Building blocks every file-backed content store needs, shared by the built-in stores.

- :class:`StoreLifecycle`: the started/closed state, the event hub behind
  ``ContentStore.subscribe``, whether the backing storage (a daemon, a directory)
  can be reached now (with the :class:`~spegel_core.protocols.StoreConnection`
  metric on each change) and ``ContentStore.status`` built from all that.
- :func:`read_file_range`: ``ContentStore.read`` over a regular file, with the
  range checks and errors the mirror expects.
- :func:`regular_file_size`: the size of a blob file, or None when it is not one.
- :func:`read_manifest_file`: the bytes of a blob file that may be a manifest;
  parse them with :mod:`spegel_core.oci.descriptors`.

Third-party stores may use them too; they are public core API.
"""

from __future__ import annotations

import os
import stat as stat_module
from collections.abc import AsyncIterator
from pathlib import Path

from spegel_core.errors import BlobUnknown, RangeInvalid, RangeNotSatisfiable
from spegel_core.oci.mediatypes import MAX_MANIFEST_SIZE
from spegel_core.protocols import MetricsSink, StoreConnection, StoreEvent, StoreStatus
from spegel_core.store_events import EventHub, EventStream

__all__ = ["READ_CHUNK", "StoreLifecycle", "check_range", "read_file_range",
           "read_manifest_file", "regular_file_size"]

#: Size of the chunks :func:`read_file_range` yields.
READ_CHUNK = 1024 * 1024


class StoreLifecycle:
    """Started and closed flags, events, reachability and the status shared by every store.

    A store calls :meth:`begin` at the top of ``start`` and :meth:`end` at the top
    of ``aclose`` (each returns False when there is nothing to do), publishes with
    :meth:`publish`, records with :meth:`set_connected` whether what it reads from
    (a daemon, a directory) can be reached, and delegates ``subscribe`` and
    ``status`` here.

    :param max_pending: events queued per subscriber before it is dropped.
    :param connected: whether the backing storage counts as reachable before the
        store first says otherwise (False for a daemon not dialled yet).
    :param detail: why not, while not connected.
    """

    def __init__(self, *, max_pending: int = 10_000, connected: bool = True,
                 detail: str = "") -> None:
        self.hub = EventHub(max_pending=max_pending)
        self.started = False
        self.closed = False
        #: Whether the backing storage can be reached now.
        self.connected = connected
        #: Why it cannot (or a note while it can); "" when all is well.
        self.detail = detail

    def begin(self) -> bool:
        """Mark the store started.

        :returns: False when it already was, or is closed.
        """
        if self.started or self.closed:
            return False
        self.started = True
        return True

    def end(self) -> bool:
        """Mark the store closed and end every subscription.

        :returns: False when it already was closed.
        """
        if self.closed:
            return False
        self.closed = True
        self.hub.close()
        return True

    def set_connected(self, connected: bool, detail: str = "", *,
                      metrics: MetricsSink | None = None) -> bool:
        """Record whether the backing storage can be reached, and why not.

        :param connected: reachable now.
        :param detail: why not (or a note while reachable); replaces the previous one.
        :param metrics: receives :class:`~spegel_core.protocols.StoreConnection` when
            ``connected`` changed (None: the change is not reported).
        :returns: whether ``connected`` changed.
        """
        changed = connected != self.connected
        self.connected = connected
        self.detail = detail
        if changed and metrics is not None:
            metrics.emit(StoreConnection(connected))
        return changed

    def publish(self, event: StoreEvent) -> None:
        """Queue ``event`` for every subscriber; never blocks."""
        self.hub.publish(event)

    def subscribe(self) -> EventStream:
        """Every event published from now on; the iterator ends when the store is closed."""
        return self.hub.subscribe()

    def status(self, running: StoreStatus | None = None) -> StoreStatus:
        """Not ready and why before start and after close; else ``running``.

        :param running: the status while started; None means ready exactly while
            connected, with :attr:`detail` as the reason.
        """
        if self.closed:
            return StoreStatus(False, "closed")
        if not self.started:
            return StoreStatus(False, "not started")
        return running if running is not None else StoreStatus(self.connected, self.detail)

    @property
    def state(self) -> str:
        """``new``, ``running`` or ``closed``, for ``__repr__``."""
        return "closed" if self.closed else "running" if self.started else "new"


def check_range(offset: int, length: int | None) -> None:
    """Raise :class:`RangeInvalid` for a negative offset or length."""
    if offset < 0 or (length is not None and length < 0):
        raise RangeInvalid(f"invalid range: offset {offset}, length {length}")


def regular_file_size(path: str | Path) -> int | None:
    """The size of the regular file at ``path``; None when it is missing or not a file.

    :raises OSError: for errors other than "not there" (for example permission denied).
    """
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return info.st_size if stat_module.S_ISREG(info.st_mode) else None


def read_manifest_file(path: str | Path) -> bytes | None:
    """The bytes of the blob file at ``path`` when they may be a manifest (blocking I/O).

    :returns: None when the file is missing, unreadable or larger than
        :data:`~spegel_core.oci.mediatypes.MAX_MANIFEST_SIZE` (no manifest is).
    """
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_MANIFEST_SIZE + 1)
    except OSError:
        return None
    return data if len(data) <= MAX_MANIFEST_SIZE else None


async def read_file_range(path: str | Path, offset: int = 0, length: int | None = None, *,
                          missing: str = "") -> AsyncIterator[bytes]:
    """Yield ``length`` bytes (to the end when None) of the file from ``offset``.

    Chunks are :data:`READ_CHUNK` bytes; the iteration stops early at the end of
    the file (a file that shrank). Blob files are small reads from the page cache,
    so they are read on the event loop; the mirror serves whole files with
    ``sendfile`` instead of this.

    :param missing: the message of :class:`BlobUnknown` when the file is not there.
    :raises RangeInvalid: negative ``offset`` or ``length``.
    :raises BlobUnknown: the file does not exist (or is a directory).
    :raises RangeNotSatisfiable: ``offset`` is past the end of the file.
    """
    check_range(offset, length)
    try:
        file = open(path, "rb")  # noqa: ASYNC230, SIM115 - small reads, closed below
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        raise BlobUnknown(missing or f"blob file {path} is not there") from exc
    with file:
        size = os.fstat(file.fileno()).st_size
        if offset > size:
            raise RangeNotSatisfiable(f"offset {offset} is past the end ({size})", size=size)
        file.seek(offset)
        remaining = size - offset if length is None else length
        while remaining > 0:
            chunk = file.read(min(READ_CHUNK, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk
