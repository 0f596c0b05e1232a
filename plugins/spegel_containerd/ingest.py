"""containerd's ingests as arriving content: watched with inotify, read as they grow.

An ingest is a download in progress: ``<content root>/ingest/<sha256 of ref>/`` with
``ref`` (``<namespace>/<seq>/<kind>-sha256:<hex>``), ``total`` (the expected size,
decimal, written before ``data``), ``startedat``, ``updatedat`` and ``data``, which
grows as bytes arrive. At commit containerd closes ``data``, checks it, renames it to
``blobs/sha256/<hex>`` and removes the directory; a failed pull deletes the
directory; a client that died leaves it (``data`` closed, shorter than ``total``)
until a retry writes to it again.

:class:`IngestWatcher` follows that with one inotify descriptor (the ingest
directory, and each ingest's directory) and publishes:

- ``CONTENT_ARRIVING`` once ``ref`` and ``total`` exist (and again when a new
  writer resumes a stalled ingest);
- ``CONTENT_CREATED`` when ``data`` is renamed away and the blob is in ``blobs/``
  (the commit);
- ``ARRIVING_ENDED`` when the ingest is deleted without a commit, or its writer
  closed ``data`` short of ``total``.

:class:`IngestReader` reads one ingest for a peer: it holds a descriptor of
``data`` (which keeps reading the same file across the commit rename) and wakes on
the watcher's events, never on a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from spegel_core.errors import ArrivingAborted, BlobUnknown
from spegel_core.inotify import (
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_MODIFY,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    Inotify,
    InotifyEvent,
    InotifyUnavailable,
)
from spegel_core.protocols import StoreEvent, StoreEventKind

log = logging.getLogger(__name__)

__all__ = ["Ingest", "IngestReader", "IngestWatcher", "parse_ref"]

_REF = re.compile(r"(?P<namespace>[^/]+)/.*-(?P<digest>sha256:[0-9a-f]{64})")
_TOP_MASK = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
_DIR_MASK = IN_CLOSE_WRITE | IN_MODIFY | IN_MOVED_FROM | IN_DELETE | IN_CREATE | IN_DELETE_SELF
#: How long to wait for ``data`` to appear after ``total`` was written.
DATA_WAIT = 2.0
#: How often to look for a missing ingest directory (containerd not started yet).
DIRECTORY_RETRY = 2.0
#: Largest ``total`` believed (a corrupt file must not announce exabytes).
MAX_TOTAL = 1 << 44
#: An ingest found at start whose ``data`` has not changed for this long is taken as
#: left behind by a dead client (not advertised until something writes to it again).
STALE_AFTER = 10.0
#: How long a just-committed blob is still served by :meth:`IngestWatcher.open`:
#: containerd renames ``data`` before its metadata says the blob exists, and a peer
#: asking in between must not get a 404 (it would go upstream for the whole layer).
COMMITTED_GRACE = 5.0


def parse_ref(text: str) -> tuple[str, str] | None:
    """``(namespace, digest)`` of an ingest ref such as ``k8s.io/1/layer-sha256:<hex>``."""
    match = _REF.fullmatch(text.strip())
    if match is None:
        return None
    return match["namespace"], match["digest"]


@dataclass(eq=False)
class Ingest:
    """One ingest directory of the namespace, and what is known of its state."""

    name: str
    path: Path
    digest: str
    total: int
    wd: int
    #: "arriving", "stalled" (writer closed short), "committed" or "aborted".
    state: str = "arriving"
    _waiters: set[asyncio.Future[None]] = field(default_factory=set)

    @property
    def data(self) -> Path:
        """The file the ingest's bytes are written to."""
        return self.path / "data"

    def notify(self) -> None:
        """Wake every reader waiting for a change."""
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def changed(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait for the next change; False if ``timeout`` s passed without one."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return False
        finally:
            self._waiters.discard(waiter)
        return True


Publish = Callable[[StoreEvent], None]


class IngestWatcher:
    """Follows ``<content_path>/ingest`` and publishes events of ``namespace``'s ingests.

    :param content_path: containerd's content directory (holding ``ingest/`` and ``blobs/``).
    :param namespace: only ingests whose ref starts with this namespace count.
    :param publish: receives each :class:`StoreEvent`.
    """

    def __init__(self, content_path: Path, namespace: str, publish: Publish) -> None:
        self.content_path = Path(content_path)
        self.namespace = namespace
        self.publish = publish
        self._inotify: Inotify | None = None
        self._top: int | None = None
        self._dirs: dict[str, int] = {}  # ingest dir name -> watch
        self._ingests: dict[str, Ingest] = {}  # dir name -> ingest of our namespace
        self._retry: asyncio.TimerHandle | None = None
        self._closed = False
        self._committed_at: dict[str, tuple[float, Ingest]] = {}

    @property
    def root(self) -> Path:
        """The ingest directory of containerd, ``<content_path>/ingest``."""
        return self.content_path / "ingest"

    def start(self) -> bool:
        """Watch the ingest directory; False (and logged) when inotify cannot be used."""
        try:
            self._inotify = Inotify(overflow=self._rescan)
        except InotifyUnavailable as exc:
            log.warning("not following containerd's ingests (%s): content is advertised "
                        "only once committed", exc)
            return False
        self._watch_root()
        return True

    def _watch_root(self) -> None:
        self._retry = None
        if self._closed or self._inotify is None:
            return
        try:
            self._top = self._inotify.watch(self.root, _TOP_MASK, self._on_root)
        except FileNotFoundError:
            log.debug("%s does not exist yet; looking again in %.0fs", self.root,
                      DIRECTORY_RETRY)
            self._retry = asyncio.get_running_loop().call_later(DIRECTORY_RETRY,
                                                                self._watch_root)
            return
        except InotifyUnavailable as exc:
            log.warning("cannot watch %s (%s): content is advertised only once committed",
                        self.root, exc)
            return
        self._rescan()

    def _rescan(self) -> None:
        """Catch up with the directory (at start, and when the kernel dropped events)."""
        try:
            names = {entry.name for entry in os.scandir(self.root) if entry.is_dir()}
        except OSError:
            names = set()
        for gone in set(self._dirs) - names:
            self._dir_gone(gone)
        for name in sorted(names):
            if name not in self._dirs:
                self._add_dir(name)
            else:
                self._check(name)

    # -- directories ---------------------------------------------------------------------
    def _on_root(self, event: InotifyEvent) -> None:
        if not event.is_dir:
            return
        if event.mask & (IN_CREATE | IN_MOVED_TO):
            self._add_dir(event.name)
        elif event.mask & (IN_DELETE | IN_MOVED_FROM):
            self._dir_gone(event.name)

    def _add_dir(self, name: str) -> None:
        if self._inotify is None or name in self._dirs:
            return
        try:
            self._dirs[name] = self._inotify.watch(self.root / name, _DIR_MASK,
                                                   lambda event: self._on_dir(name, event))
        except FileNotFoundError:
            return
        except InotifyUnavailable as exc:
            log.warning("cannot watch ingest %s: %s", name, exc)
            return
        self._check(name)  # files written before the watch existed

    def _dir_gone(self, name: str) -> None:
        wd = self._dirs.pop(name, None)
        if wd is not None and self._inotify is not None:
            self._inotify.unwatch(wd)
        ingest = self._ingests.pop(name, None)
        if ingest is None:
            return
        if ingest.state in ("arriving", "stalled") and not self._committed(ingest):
            self._end(ingest, "aborted", "ingest removed without a commit")
        elif ingest.state != "committed":
            self._commit(ingest)
        ingest.notify()

    def _check(self, name: str) -> None:
        """Register the ingest once ``ref`` and ``total`` are both readable."""
        if name in self._ingests:
            return
        path = self.root / name
        try:
            ref = (path / "ref").read_text()
            total = int((path / "total").read_text().strip() or "0")
        except (OSError, ValueError, UnicodeDecodeError):
            return  # not complete yet: its CLOSE_WRITE brings us back
        parsed = parse_ref(ref)
        if parsed is None or parsed[0] != self.namespace or not 0 < total <= MAX_TOTAL:
            return
        ingest = Ingest(name, path, parsed[1], total, self._dirs.get(name, -1))
        self._ingests[name] = ingest
        if _stale(ingest.data):
            ingest.state = "stalled"
            log.debug("ingest of %s is left over from a dead pull; not arriving", ingest.digest)
            return
        if ingest.state == "arriving":
            log.debug("arriving: %s (%d bytes expected)", ingest.digest, total)
            self.publish(StoreEvent(StoreEventKind.CONTENT_ARRIVING, ingest.digest))

    def _on_dir(self, name: str, event: InotifyEvent) -> None:
        if event.mask & IN_DELETE_SELF:
            self._dir_gone(name)
            return
        ingest = self._ingests.get(name)
        if ingest is None:
            if event.name in ("ref", "total") and event.mask & IN_CLOSE_WRITE:
                self._check(name)
            return
        if event.name != "data":
            return
        if event.mask & IN_MOVED_FROM:
            self._commit(ingest)
        elif event.mask & IN_DELETE:
            self._end(ingest, "aborted", "ingest data deleted")
        elif event.mask & (IN_MODIFY | IN_CREATE):
            self._data_changed(ingest, closed=False)
        elif event.mask & IN_CLOSE_WRITE:
            self._data_changed(ingest, closed=True)
        ingest.notify()

    # -- states ----------------------------------------------------------------------------
    def _data_changed(self, ingest: Ingest, *, closed: bool) -> None:
        if ingest.state in ("committed", "aborted"):
            return
        if closed:
            try:
                size = os.stat(ingest.data).st_size
            except OSError:
                return
            if size < ingest.total:  # the writer went away (a complete file commits next)
                self._end(ingest, "stalled", f"writer closed data at {size} of {ingest.total}")
        elif ingest.state == "stalled":
            ingest.state = "arriving"  # a retry writes to it again
            log.debug("arriving again: %s", ingest.digest)
            self.publish(StoreEvent(StoreEventKind.CONTENT_ARRIVING, ingest.digest))

    def _end(self, ingest: Ingest, state: str, why: str) -> None:
        was = ingest.state
        ingest.state = state
        if was == "arriving":
            log.info("%s stopped arriving: %s", ingest.digest, why)
            self.publish(StoreEvent(StoreEventKind.ARRIVING_ENDED, ingest.digest))
        ingest.notify()

    def _committed(self, ingest: Ingest) -> bool:
        algorithm, _, encoded = ingest.digest.partition(":")
        return (self.content_path / "blobs" / algorithm / encoded).is_file()

    def _commit(self, ingest: Ingest) -> None:
        if not self._committed(ingest):  # renamed elsewhere: not a commit we know
            self._end(ingest, "aborted", "data moved away without a commit")
            return
        ingest.state = "committed"
        now = time.monotonic()
        for old in [d for d, (at, _) in self._committed_at.items() if now - at > COMMITTED_GRACE]:
            del self._committed_at[old]
        self._committed_at[ingest.digest] = (now, ingest)
        ingest.notify()
        log.debug("committed: %s", ingest.digest)
        self.publish(StoreEvent(StoreEventKind.CONTENT_CREATED, ingest.digest))

    # -- readers ---------------------------------------------------------------------------
    def arriving(self) -> list[str]:
        """Digests arriving now (writer alive, not committed)."""
        return sorted({i.digest for i in self._ingests.values() if i.state == "arriving"})

    def find(self, digest: str) -> Ingest | None:
        """The ingest of ``digest`` still arriving, or None."""
        for ingest in self._ingests.values():
            if ingest.digest == digest and ingest.state == "arriving":
                return ingest
        return None

    async def open(self, digest: str, stall_timeout: float) -> IngestReader:
        """A reader of the arriving ``digest``; raises :class:`BlobUnknown` if not arriving."""
        ingest = self.find(digest)
        if ingest is None:
            return self._open_committed(digest, stall_timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DATA_WAIT
        while True:
            try:
                fd = os.open(ingest.data, os.O_RDONLY | os.O_CLOEXEC)
                break
            except FileNotFoundError:
                remaining = deadline - loop.time()
                if ingest.state != "arriving" or remaining <= 0:
                    raise BlobUnknown(f"blob {digest} is not arriving here") from None
                await ingest.changed(remaining)
        return IngestReader(ingest, fd, stall_timeout)

    def _open_committed(self, digest: str, stall_timeout: float) -> IngestReader:
        """A blob committed a moment ago, read from ``blobs/`` (see :data:`COMMITTED_GRACE`)."""
        recent = self._committed_at.get(digest)
        if recent is None or time.monotonic() - recent[0] > COMMITTED_GRACE:
            raise BlobUnknown(f"blob {digest} is not arriving here")
        algorithm, _, encoded = digest.partition(":")
        try:
            fd = os.open(self.content_path / "blobs" / algorithm / encoded,
                         os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            raise BlobUnknown(f"blob {digest} is not arriving here") from None
        return IngestReader(recent[1], fd, stall_timeout)

    def close(self) -> None:
        """Stop watching; wakes every reader (they see the content as aborted)."""
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        for ingest in self._ingests.values():
            if ingest.state in ("arriving", "stalled"):
                ingest.state = "aborted"
            ingest.notify()
        self._ingests.clear()
        self._dirs.clear()
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    def __repr__(self) -> str:
        return (f"<IngestWatcher {self.root} ns={self.namespace!r} "
                f"arriving={len(self.arriving())} dirs={len(self._dirs)}>")


def _stale(data: Path) -> bool:
    try:
        info = os.stat(data)
    except OSError:
        return False  # not created yet: the download is starting
    return time.time() - info.st_mtime > STALE_AFTER


class IngestReader:
    """:class:`~spegel_core.protocols.ArrivingContent` over one ingest's ``data``."""

    def __init__(self, ingest: Ingest, fd: int, stall_timeout: float) -> None:
        self.ingest = ingest
        self.digest = ingest.digest
        self.size = ingest.total
        self.stall_timeout = stall_timeout
        self._fd: int | None = fd

    def fileno(self) -> int | None:
        """The descriptor of the ingest's data file (None once closed)."""
        return self._fd

    def _available(self) -> tuple[int, bool]:
        """Bytes in the file (at most ``size``), and whether the file was deleted."""
        assert self._fd is not None
        info = os.fstat(self._fd)
        return min(info.st_size, self.size), info.st_nlink == 0

    async def wait(self, offset: int, timeout: float | None = None) -> int:  # noqa: ASYNC109
        """Bytes held, once more than ``offset``; raises :class:`ArrivingAborted`."""
        if self._fd is None:
            raise ArrivingAborted(f"reader of {self.digest} is closed")
        limit = self.stall_timeout if timeout is None else timeout
        while True:
            available, deleted = self._available()
            if deleted or self.ingest.state == "aborted":
                raise ArrivingAborted(f"{self.digest}: the download was abandoned")
            if available > offset:
                return available
            if self.ingest.state == "stalled":
                raise ArrivingAborted(f"{self.digest}: the download stopped at {available} "
                                      f"of {self.size} bytes")
            if self.ingest.state == "committed":  # renamed, but shorter than announced
                raise ArrivingAborted(f"{self.digest}: committed with {available} bytes")
            if not await self.ingest.changed(limit):
                raise ArrivingAborted(f"{self.digest}: no new bytes for {limit:.0f}s")

    async def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` of what has landed so far."""
        if self._fd is None:
            raise ArrivingAborted(f"reader of {self.digest} is closed")
        return await asyncio.to_thread(os.pread, self._fd, length, offset)

    async def aclose(self) -> None:
        """Close the reader; idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __repr__(self) -> str:
        return f"<IngestReader {self.digest} {self.ingest.state} size={self.size}>"
