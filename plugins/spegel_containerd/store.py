"""A content store over containerd: containerd's content store is the cache.

Tags come from ``Images.List`` (the image name is the reference, so the
registry is taken from it), digests from ``Content.List`` of the namespace
(only content really held, so a platform manifest that an index names but the
node never pulled is "not here"). Blobs are served from containerd's content
directory (``<content_path>/blobs/<algorithm>/<hex>``, zero-copy through
:attr:`ContentInfo.path`), or streamed with ``Content.Read`` when that
directory cannot be read.

A background task keeps an ``Events.Subscribe`` stream open and turns image
and content events into :class:`StoreEvent` objects. containerd 1.6 sends no event
when content is created or garbage-collected, so the store walks each new image
to announce the content it brought, and re-lists content shortly after an image
is deleted to announce what the garbage collector removed. When the stream
breaks (containerd restarted or stopped), :meth:`ContainerdStore.status` says
"store disconnected", the task reconnects with exponential backoff (at once
when a new socket appears) and publishes ``RESYNC`` once connected again. It
never exits and never raises out of the background task (that part lives in
:mod:`spegel_containerd.follower`).

With ``watch_ingests`` the store also follows containerd's ingests (downloads in
progress, :mod:`spegel_containerd.ingest`) and implements the optional
:class:`~spegel_core.protocols.ArrivingStore` part: their digests are published as
arriving, their commits as created, and peers can read them as they land.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat as stat_module
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from types import TracebackType

from spegel_containerd.client import ContainerdClient
from spegel_containerd.follower import EventFollower, tag_reference
from spegel_containerd.ingest import IngestReader, IngestWatcher
from spegel_containerd.walker import ImageWalker
from spegel_core.errors import (
    BlobUnknown,
    ManifestUnknown,
    RangeNotSatisfiable,
    StoreUnavailable,
)
from spegel_core.oci.digest import is_digest, parse_digest, split_digest
from spegel_core.oci.mediatypes import MAX_MANIFEST_SIZE
from spegel_core.oci.reference import Reference
from spegel_core.protocols import (
    ContentInfo,
    Image,
    MetricsSink,
    StoreEvent,
    StoreEventKind,
    StoreStatus,
)
from spegel_core.store_events import EventStream
from spegel_core.store_kit import (
    READ_CHUNK,
    StoreLifecycle,
    check_range,
    read_file_range,
    read_manifest_file,
)

log = logging.getLogger(__name__)

__all__ = ["READ_CHUNK", "ContainerdStore", "tag_reference"]

#: How long ``start`` waits for the first connection before returning not ready.
START_WAIT = 2.0

ClientFactory = Callable[[Path, str], ContainerdClient]


class ContainerdStore(EventFollower):
    """:class:`~spegel_core.protocols.ContentStore` over a containerd namespace.

    :param socket: containerd's gRPC socket.
    :param namespace: the containerd namespace (``k8s.io`` for Kubernetes).
    :param content_path: containerd's content directory (holding ``blobs/``); None
        streams every blob over gRPC.
    :param reconnect_max_backoff: longest wait between reconnection attempts, seconds.
    :param reconnect_min_backoff: first wait after a failure, seconds.
    :param call_timeout: deadline of containerd calls, seconds.
    :param gc_delay: how long after an image deletion content is listed again.
    :param client_factory: builds the gRPC client (tests inject fakes).
    :param watch_ingests: follow ``<content_path>/ingest`` and offer arriving content.
    :param arriving_stall_timeout: how long a reader of arriving content waits for new
        bytes before it gives up, seconds.
    :param metrics: where :class:`StoreConnection` events go.

    :attr:`metrics` (the hook's ``metrics`` argument) receives a :class:`StoreConnection` event
    each time the connection to containerd is made or lost.
    """

    name = "containerd"
    metrics: MetricsSink | None = None

    def __init__(self, socket: Path, namespace: str = "k8s.io",
                 content_path: Path | None = None, *, reconnect_max_backoff: float = 5.0,
                 reconnect_min_backoff: float = 0.1, call_timeout: float = 10.0,
                 gc_delay: float = 1.0, client_factory: ClientFactory | None = None,
                 watch_ingests: bool = False, arriving_stall_timeout: float = 30.0,
                 metrics: MetricsSink | None = None) -> None:
        self.metrics = metrics
        if reconnect_max_backoff <= 0 or reconnect_min_backoff <= 0:
            raise ValueError("reconnect backoffs must be positive")
        self.socket = Path(socket)
        self.namespace = namespace
        self.content_path = Path(content_path) if content_path is not None else None
        self.reconnect_max_backoff = reconnect_max_backoff
        self.reconnect_min_backoff = min(reconnect_min_backoff, reconnect_max_backoff)
        self.call_timeout = call_timeout
        self.gc_delay = gc_delay
        self._factory = client_factory or self._default_client
        self._client: ContainerdClient | None = None
        self._life = StoreLifecycle(connected=False, detail="not connected yet")
        self._connections = 0
        self._failed = False
        self._version = ""
        self._first_attempt = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._checker: asyncio.Task[None] | None = None
        self._walker = ImageWalker()
        self._images: dict[str, str] = {}
        self._known: set[str] = set()
        self._warned: set[str] = set()
        self._grpc_reads = False
        self.arriving_stall_timeout = arriving_stall_timeout
        self._ingests: IngestWatcher | None = None
        if watch_ingests and self.content_path is not None:
            self._ingests = IngestWatcher(self.content_path, namespace, self._on_ingest)

    def _default_client(self, socket: Path, namespace: str) -> ContainerdClient:
        return ContainerdClient(socket, namespace, timeout=self.call_timeout,
                                max_backoff=self.reconnect_max_backoff)

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        """Connect (or start trying to) and subscribe to events.

        Never raises for a containerd that is not there yet: the store is then not
        ready and retries.
        """
        if not self._life.begin():
            return
        if self._ingests is not None and not self._ingests.start():
            self._ingests = None
        self._client = self._factory(self.socket, self.namespace)
        self._watcher = asyncio.create_task(self._watch(), name=f"containerd-watch {self.socket}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_attempt.wait(), min(self.call_timeout, START_WAIT))
        if self._life.connected:
            log.info("containerd %s at %s, namespace %s: %d images, %d blobs", self._version,
                     self.socket, self.namespace, len(self._images), len(self._known))

    async def aclose(self) -> None:
        """Stop watching, end every subscription and close the channel; idempotent."""
        if not self._life.end():
            return
        self._life.set_connected(False, "closed")
        if self._ingests is not None:
            self._ingests.close()
        tasks = [task for task in (self._watcher, self._checker) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def __aenter__(self) -> ContainerdStore:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    # -- reading ---------------------------------------------------------------------------
    async def _read_manifest(self, client: ContainerdClient, digest: str) -> bytes | None:
        info = await client.content_info(digest)
        if info is None or info.size > MAX_MANIFEST_SIZE:
            return None
        path = self._file(digest, info.size)
        if path is not None:
            return await asyncio.to_thread(read_manifest_file, path)
        try:
            return b"".join([chunk async for chunk in client.read(digest)])
        except (OSError, BlobUnknown):
            return None

    # -- content --------------------------------------------------------------------------
    def _require_client(self) -> ContainerdClient:
        if self._client is None:
            raise StoreUnavailable("store disconnected: " + ("closed" if self._life.closed
                                                               else "not started"))
        return self._client

    async def _list_images(self, client: ContainerdClient) -> list[Image]:
        images: dict[str, Image] = {}
        names: dict[str, str] = {}
        for record in await client.list_images():
            digest = record.target.digest
            if not is_digest(digest):
                continue
            names[record.name] = digest
            await self._walker.walk(partial(self._read_manifest, client), digest,
                                    record.target.media_type or None)
            reference = tag_reference(record.name)
            if reference is None:
                self._warn_once(f"name:{record.name}", logging.DEBUG,
                                "skipping containerd image %r: not a tag reference", record.name)
                continue
            images[record.name] = Image(reference, digest)
        self._images = names
        return [image for _, image in sorted(images.items())]

    async def list_images(self) -> list[Image]:
        """Every image of the namespace named by a tag reference, sorted."""
        return await self._list_images(self._require_client())

    async def list_digests(self) -> list[str]:
        """Every digest the namespace's content store holds, sorted."""
        infos = await self._require_client().list_content()
        digests = {info.digest for info in infos if is_digest(info.digest)}
        self._known = set(digests)
        return sorted(digests)

    async def resolve(self, reference: Reference) -> str:
        """The digest ``reference`` is tagged with; raises :class:`ManifestUnknown`."""
        client = self._require_client()
        if reference.tag is None:
            digest = str(reference.digest)
            if await client.content_info(digest) is not None:
                return digest
            raise ManifestUnknown(f"manifest {reference} is not in containerd")
        name = str(Reference(reference.registry, reference.repository, reference.tag))
        image = await client.get_image(name)
        if image is None or not is_digest(image.target.digest):
            raise ManifestUnknown(f"tag {name} is not in containerd")
        return str(image.target.digest)

    def _file(self, digest: str, size: int) -> str | None:
        """The blob's file in the content directory, when it can be served from there."""
        if self.content_path is None:
            return None
        algorithm, encoded = split_digest(digest)
        path = self.content_path / "blobs" / algorithm / encoded
        try:
            info = os.stat(path)
        except FileNotFoundError:
            self._grpc_fallback("missing", "blob %s held by containerd is not at %s; is "
                                "--containerd-content-path right? Streaming over gRPC",
                                digest, path)
            return None
        except OSError as exc:
            self._grpc_fallback("unreadable", "content directory %s is not readable (%s); "
                                "streaming blobs over gRPC", self.content_path, exc)
            return None
        if not stat_module.S_ISREG(info.st_mode) or info.st_size != size:
            return None
        if not os.access(path, os.R_OK):
            self._grpc_fallback("unreadable", "content directory %s is not readable "
                                "(permission denied on %s); streaming blobs over gRPC",
                                self.content_path, path)
            return None
        return str(path)

    def _grpc_fallback(self, key: str, message: str, *args: object) -> None:
        self._grpc_reads = True
        self._warn_once(key, logging.WARNING, message, *args)

    def _warn_once(self, key: str, level: int, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.log(level, message, *args)

    async def stat(self, digest: str) -> ContentInfo:
        """Size, media type (when an image walk saw it) and file of a blob.

        Raises :class:`DigestInvalid`, :class:`BlobUnknown` (not in the
        namespace) or :class:`StoreUnavailable`.
        """
        parse_digest(digest)
        info = await self._require_client().content_info(digest)
        if info is None:
            raise BlobUnknown(f"blob {digest} is not in containerd")
        return ContentInfo(digest=digest, size=int(info.size),
                           media_type=self._walker.media_types.get(digest),
                           path=self._file(digest, int(info.size)))

    async def read(self, digest: str, offset: int = 0,
                   length: int | None = None) -> AsyncIterator[bytes]:
        """Yield ``length`` bytes (to the end when None) from ``offset``.

        From the content directory when possible, else ``Content.Read``. Raises
        :class:`DigestInvalid`, :class:`BlobUnknown`, :class:`RangeInvalid`,
        :class:`RangeNotSatisfiable` or :class:`StoreUnavailable`.
        """
        parse_digest(digest)
        check_range(offset, length)
        client = self._require_client()
        info = await client.content_info(digest)
        if info is None:
            raise BlobUnknown(f"blob {digest} is not in containerd")
        size = int(info.size)
        if offset > size:
            raise RangeNotSatisfiable(f"offset {offset} is past the end ({size})", size=size)
        count = size - offset if length is None else min(length, size - offset)
        if count <= 0:
            return
        path = self._file(digest, size)
        if path is None:
            async for chunk in client.read(digest, offset, count):
                yield chunk
            return
        # A file collected between stat and open is BlobUnknown.
        async for chunk in read_file_range(path, offset, count,
                                           missing=f"blob file {path} vanished"):
            yield chunk

    # -- arriving content (the optional ArrivingStore part) -----------------------------------
    def _on_ingest(self, event: StoreEvent) -> None:
        if event.kind is StoreEventKind.CONTENT_CREATED:
            self._known.add(event.key)
        self._life.publish(event)

    async def list_arriving(self) -> list[str]:
        """Digests containerd is downloading now (none without ``watch_ingests``)."""
        return self._ingests.arriving() if self._ingests is not None else []

    async def open_arriving(self, digest: str) -> IngestReader:
        """A reader of an ingest still arriving; raises :class:`BlobUnknown` otherwise."""
        parse_digest(digest)
        if self._ingests is None:
            raise BlobUnknown(f"blob {digest} is not arriving here")
        return await self._ingests.open(digest, self.arriving_stall_timeout)

    # -- events and status -----------------------------------------------------------------
    def subscribe(self) -> EventStream:
        """Every change seen from now on; the iterator ends when the store is closed."""
        return self._life.subscribe()

    def status(self) -> StoreStatus:
        """Ready while connected to containerd; else why not ("store disconnected: ...")."""
        life = self._life
        if not life.connected:
            return life.status(StoreStatus(False, f"store disconnected: {life.detail}"))
        if self._grpc_reads:
            return life.status(StoreStatus(True, "some blobs are streamed over gRPC "
                                                 "(see the log)"))
        return life.status(StoreStatus(True))

    def __repr__(self) -> str:
        state = self._life.state
        if state == "running":
            state = "connected" if self._life.connected else "disconnected"
        return (f"<ContainerdStore {state} socket={str(self.socket)!r} ns={self.namespace!r} "
                f"images={len(self._images)} blobs={len(self._known)} "
                f"subscribers={self._life.hub.subscribers}>")
