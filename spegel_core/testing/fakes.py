"""In-memory fakes of the core protocols, for unit tests.

- :class:`MemoryContentStore`: a :class:`~spegel_core.protocols.ContentStore` of
  bytes in a dict, with the events a real store publishes.
- :class:`MemoryNetwork` and :class:`MemoryRouter`: routers that find each
  other's advertised keys through a shared network object; they are also
  ``SingleFlightRouter``s, with one shared rendezvous (``network.claims``).
- :class:`StaticListDiscovery`: a fixed list of bootstrap peers.
- :class:`RecordingSink`: a metrics sink that keeps every event.
- :class:`MemoryArrivingStore`: a memory store with the optional ``ArrivingStore``
  part; the test makes content arrive, grow, commit or abort.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import TypeVar

from spegel_core.errors import (
    ArrivingAborted,
    BlobUnknown,
    ManifestUnknown,
    RangeInvalid,
    RangeNotSatisfiable,
)
from spegel_core.oci.digest import compute_digest, parse_digest
from spegel_core.oci.image_builder import BuiltImage
from spegel_core.oci.reference import Reference
from spegel_core.protocols import (
    ClaimAnswer,
    ContentInfo,
    Image,
    MetricEvent,
    Peer,
    PeerAddress,
    RouterStatus,
    StoreEvent,
    StoreEventKind,
    StoreStatus,
)
from spegel_core.rendezvous import ClaimBook
from spegel_core.store_events import EventHub, EventStream

__all__ = [
    "MemoryArrivingStore",
    "MemoryArrivingWriter",
    "MemoryContentStore",
    "MemoryNetwork",
    "MemoryRouter",
    "RecordingSink",
    "StaticListDiscovery",
]

E = TypeVar("E")

#: Size of the chunks :meth:`MemoryContentStore.read` yields.
READ_CHUNK = 1024 * 1024


def _tag_key(reference: Reference) -> str:
    if reference.tag is None:
        raise ValueError(f"{reference} is not a tag reference")
    return str(Reference(reference.registry, reference.repository, reference.tag))


class MemoryContentStore:
    """A content store held in memory; ``path`` of every blob is None.

    Changes made with :meth:`add_blob`, :meth:`add_image`, :meth:`remove_image`
    and :meth:`remove_blob` are published to subscribers at once.
    """

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.blobs: dict[str, bytes] = {}
        self.media_types: dict[str, str] = {}
        self.images: dict[str, Image] = {}
        self._hub = EventHub()
        self._started = False
        self._closed = False
        self._status_override: StoreStatus | None = None

    # -- test controls -----------------------------------------------------------
    def add_blob(self, data: bytes, media_type: str | None = None) -> str:
        """Store ``data``; returns its sha256 digest."""
        digest = compute_digest(data)
        if media_type is not None:
            self.media_types[digest] = media_type
        if digest not in self.blobs:
            self.blobs[digest] = bytes(data)
            self._hub.publish(StoreEvent(StoreEventKind.CONTENT_CREATED, digest))
        return digest

    def remove_blob(self, digest: str) -> None:
        """Drop a blob and publish ``CONTENT_DELETED`` (if it was held)."""
        if self.blobs.pop(digest, None) is not None:
            self.media_types.pop(digest, None)
            self._hub.publish(StoreEvent(StoreEventKind.CONTENT_DELETED, digest))

    def add_image(self, reference: str, digest: str) -> Image:
        """Tag ``digest`` as ``reference`` (a full tag reference); replaces an old tag."""
        image = Image(Reference.parse(reference), parse_digest(digest))
        key = _tag_key(image.reference)
        image = Image(Reference.parse(key), image.digest)
        old = self.images.get(key)
        if old is not None and old.digest == image.digest:
            return old
        if old is not None:
            self._hub.publish(StoreEvent(StoreEventKind.IMAGE_DELETED, key, old.digest))
        self.images[key] = image
        self._hub.publish(StoreEvent(StoreEventKind.IMAGE_CREATED, key, image.digest))
        return image

    def remove_image(self, reference: str) -> None:
        """Drop a tag and publish ``IMAGE_DELETED`` (if it was held)."""
        key = _tag_key(Reference.parse(reference))
        old = self.images.pop(key, None)
        if old is not None:
            self._hub.publish(StoreEvent(StoreEventKind.IMAGE_DELETED, key, old.digest))

    def add_built_image(self, image: BuiltImage) -> None:
        """Copy every blob of an image written by ``build_image`` and tag it."""
        for digest in image.blobs:
            self.add_blob(image.blob_path(digest).read_bytes(), image.media_types.get(digest))
        self.add_image(image.reference, image.index_digest)

    def set_status(self, ready: bool, detail: str = "") -> None:
        """Force what :meth:`status` answers (``ready=True, detail=""`` after start)."""
        self._status_override = StoreStatus(ready, detail)

    def publish(self, event: StoreEvent) -> None:
        """Send an arbitrary event (for example ``RESYNC``) to subscribers."""
        self._hub.publish(event)

    # -- ContentStore ----------------------------------------------------------------
    async def start(self) -> None:
        """Mark the store started."""
        self._started = True

    async def aclose(self) -> None:
        """Close the store and end every subscription."""
        self._closed = True
        self._hub.close()

    async def list_images(self) -> list[Image]:
        """The tags held, sorted."""
        return [image for _, image in sorted(self.images.items())]

    async def list_digests(self) -> list[str]:
        """The digests held, sorted."""
        return sorted(self.blobs)

    async def resolve(self, reference: Reference) -> str:
        """The digest ``reference`` names here; :class:`ManifestUnknown` if none."""
        if reference.tag is None:
            if reference.digest is not None and reference.digest in self.blobs:
                return reference.digest
            raise ManifestUnknown(f"manifest {reference} is not in the store")
        image = self.images.get(_tag_key(reference))
        if image is None:
            raise ManifestUnknown(f"tag {reference} is not in the store")
        return image.digest

    async def stat(self, digest: str) -> ContentInfo:
        """Size and media type of a blob; :class:`BlobUnknown` if not held."""
        data = self.blobs.get(parse_digest(digest))
        if data is None:
            raise BlobUnknown(f"blob {digest} is not in the store")
        return ContentInfo(digest, len(data), self.media_types.get(digest), None)

    async def read(self, digest: str, offset: int = 0,
                   length: int | None = None) -> AsyncIterator[bytes]:
        """The bytes of a blob from ``offset``, ``length`` of them (or to the end)."""
        info = await self.stat(digest)
        if offset < 0 or (length is not None and length < 0):
            raise RangeInvalid(f"invalid range: offset {offset}, length {length}")
        if offset > info.size:
            raise RangeNotSatisfiable(f"offset {offset} past the end", size=info.size)
        end = info.size if length is None else min(info.size, offset + length)
        view = memoryview(self.blobs[digest])
        for start in range(offset, end, READ_CHUNK):
            yield bytes(view[start : min(end, start + READ_CHUNK)])

    def subscribe(self) -> EventStream:
        """Every change from now on."""
        return self._hub.subscribe()

    def status(self) -> StoreStatus:
        """Ready once started and until closed."""
        if self._closed:
            return StoreStatus(False, "closed")
        if self._status_override is not None:
            return self._status_override
        return StoreStatus(True) if self._started else StoreStatus(False, "not started")

    def __repr__(self) -> str:
        return (f"<MemoryContentStore {self.name!r} images={len(self.images)} "
                f"blobs={len(self.blobs)} subscribers={self._hub.subscribers}>")


class MemoryNetwork:
    """What several :class:`MemoryRouter`s share: who provides which key."""

    def __init__(self) -> None:
        self.routers: list[MemoryRouter] = []
        self._providers: dict[str, dict[Peer, None]] = {}
        #: The one rendezvous of every digest (single flight).
        self.claims = ClaimBook()
        #: When True, claims find no rendezvous (they return None).
        self.rendezvous_down = False

    def add_provider(self, key: str, peer: Peer) -> None:
        """Record that ``peer`` provides ``key`` (also usable without a router)."""
        self._providers.setdefault(key, {})[peer] = None

    def remove_provider(self, key: str, peer: Peer) -> None:
        """``peer`` no longer provides ``key``."""
        self._providers.get(key, {}).pop(peer, None)

    def providers(self, key: str) -> list[Peer]:
        """Providers of ``key`` in the order they were added."""
        return list(self._providers.get(key, {}))

    def __repr__(self) -> str:
        return f"<MemoryNetwork routers={len(self.routers)} keys={len(self._providers)}>"


class MemoryRouter:
    """A :class:`~spegel_core.protocols.Router` over a :class:`MemoryNetwork`.

    :param network: shared with the other routers of a test.
    :param peer: where this node's mirror listens (what others get from lookups).
    :param delay: seconds each lookup waits before its first peer (0 for none).
    :param include_self: whether lookups may yield this router's own peer.
    """

    def __init__(self, network: MemoryNetwork, peer: Peer, *, name: str = "memory",
                 delay: float = 0.0, include_self: bool = False) -> None:
        self.network = network
        self.peer = peer
        self.name = name
        self.delay = delay
        self.include_self = include_self
        self.advertised: set[str] = set()
        self.lookups: list[str] = []
        #: Digests claimed (single flight), in order.
        self.claimed: list[str] = []
        self.started = False
        self.closed = False
        network.routers.append(self)

    async def start(self) -> None:
        """Mark the router started."""
        self.started = True

    async def aclose(self) -> None:
        """Withdraw every key and mark the router closed."""
        if not self.closed:
            self.closed = True
            await self.withdraw(list(self.advertised))
            if self in self.network.routers:
                self.network.routers.remove(self)

    async def advertise(self, keys: Sequence[str]) -> None:
        """Record ``keys`` as advertised by this node."""
        for key in keys:
            self.advertised.add(key)
            self.network.add_provider(key, self.peer)

    async def withdraw(self, keys: Sequence[str]) -> None:
        """Stop advertising ``keys``."""
        for key in keys:
            self.advertised.discard(key)
            self.network.remove_provider(key, self.peer)

    async def lookup(
        self, key: str, count: int, timeout: float  # noqa: ASYNC109 - the protocol's name
    ) -> AsyncIterator[Peer]:
        """Yield up to ``count`` providers of ``key`` from the network."""
        self.lookups.append(key)
        if self.delay:
            if self.delay >= timeout:
                await asyncio.sleep(timeout)
                return
            await asyncio.sleep(self.delay)
        found = 0
        for peer in self.network.providers(key):
            if found >= count:
                return
            if peer == self.peer and not self.include_self:
                continue
            found += 1
            yield peer

    async def claim(self, digest: str, fanout: int, ttl: float,
                    timeout: float) -> ClaimAnswer | None:  # noqa: ASYNC109
        """Claim ``digest`` at the network's one rendezvous."""
        self.claimed.append(digest)
        if self.network.rendezvous_down or self.closed:
            return None
        return self.network.claims.claim(digest.encode(), self.peer, fanout=fanout, ttl=ttl,
                                         now=time.monotonic())

    async def release(self, digest: str) -> None:
        """Release this node's claim of ``digest``."""
        self.network.claims.release(digest.encode(), self.peer)

    def flights(self) -> list[dict[str, object]]:
        """The flights of the shared claim book."""
        return self.network.claims.snapshot(time.monotonic())

    def status(self) -> RouterStatus:
        """The router's state now."""
        node_id = self.peer.node_id.hex() or f"{self.peer.host}:{self.peer.port}"
        return RouterStatus(node_id=node_id, address=f"{self.peer.host}:{self.peer.port}",
                            peers=len(self.network.routers) - 1,
                            advertised_keys=len(self.advertised))

    def __repr__(self) -> str:
        return f"<MemoryRouter {self.peer.url} advertised={len(self.advertised)}>"


class StaticListDiscovery:
    """A :class:`~spegel_core.protocols.Discovery` that returns a fixed list."""

    def __init__(self, peers: Sequence[PeerAddress] = (), *, name: str = "static-list",
                 refresh_interval: float = 60.0) -> None:
        self.name = name
        self.peers = list(peers)
        self.refresh_interval = refresh_interval
        self.calls = 0
        self.closed = False

    async def bootstrap_peers(self) -> list[PeerAddress]:
        """The static list (each call counted)."""
        self.calls += 1
        return list(self.peers)

    async def aclose(self) -> None:
        """Mark the source closed."""
        self.closed = True

    def __repr__(self) -> str:
        return f"<StaticListDiscovery {self.name!r} peers={len(self.peers)}>"


class RecordingSink:
    """A :class:`~spegel_core.protocols.MetricsSink` that appends every event to ``events``."""

    def __init__(self) -> None:
        self.events: list[MetricEvent] = []

    def emit(self, event: MetricEvent) -> None:
        """Record ``event``."""
        self.events.append(event)

    def of_type(self, kind: type[E]) -> list[E]:
        """The recorded events of one type, in order."""
        return [event for event in self.events if isinstance(event, kind)]

    def clear(self) -> None:
        """Forget the events recorded so far."""
        self.events.clear()

    def __repr__(self) -> str:
        return f"<RecordingSink events={len(self.events)}>"



class MemoryArrivingWriter:
    """Content arriving in a :class:`MemoryArrivingStore`: the test appends, commits or aborts."""

    def __init__(self, store: MemoryArrivingStore, digest: str, size: int) -> None:
        self.store = store
        self.digest = digest
        self.size = size
        self.data = bytearray()
        self.state = "arriving"
        self.changed = asyncio.Condition()

    async def append(self, data: bytes) -> None:
        """Add bytes that arrived and wake the readers."""
        self.data += data
        async with self.changed:
            self.changed.notify_all()

    async def commit(self) -> None:
        """Make it ordinary content (``CONTENT_CREATED``); readers keep reading."""
        self.state = "committed"
        self.store.arriving.pop(self.digest, None)
        self.store.add_blob(bytes(self.data))
        async with self.changed:
            self.changed.notify_all()

    async def abort(self) -> None:
        """Drop it without a commit (``ARRIVING_ENDED``); readers are cut."""
        self.state = "aborted"
        self.store.arriving.pop(self.digest, None)
        self.store.publish(StoreEvent(StoreEventKind.ARRIVING_ENDED, self.digest))
        async with self.changed:
            self.changed.notify_all()


class MemoryArrivingReader:
    """:class:`~spegel_core.protocols.ArrivingContent` of a :class:`MemoryArrivingWriter`."""

    def __init__(self, writer: MemoryArrivingWriter) -> None:
        self.writer = writer
        self.digest = writer.digest
        self.size = writer.size
        self.closed = False

    def fileno(self) -> int | None:
        return None

    async def wait(self, offset: int, timeout: float) -> int:  # noqa: ASYNC109
        writer = self.writer
        async with writer.changed:
            while True:
                if writer.state == "aborted" or self.closed:
                    raise ArrivingAborted(f"{self.digest} was abandoned")
                if len(writer.data) > offset:
                    return min(len(writer.data), self.size)
                try:
                    await asyncio.wait_for(writer.changed.wait(), timeout)
                except TimeoutError:
                    raise ArrivingAborted(f"{self.digest}: nothing new for {timeout}s") from None

    async def read(self, offset: int, length: int) -> bytes:
        return bytes(self.writer.data[offset:offset + length])

    async def aclose(self) -> None:
        self.closed = True


class MemoryArrivingStore(MemoryContentStore):
    """A :class:`MemoryContentStore` with the optional ``ArrivingStore`` part."""

    def __init__(self, name: str = "memory-arriving") -> None:
        super().__init__(name)
        self.arriving: dict[str, MemoryArrivingWriter] = {}

    def begin_arriving(self, digest: str, size: int) -> MemoryArrivingWriter:
        """Start content ``digest`` of ``size`` bytes arriving (``CONTENT_ARRIVING``)."""
        writer = MemoryArrivingWriter(self, parse_digest(digest), size)
        self.arriving[digest] = writer
        self.publish(StoreEvent(StoreEventKind.CONTENT_ARRIVING, digest))
        return writer

    async def list_arriving(self) -> list[str]:
        """The digests still arriving, sorted."""
        return sorted(self.arriving)

    async def open_arriving(self, digest: str) -> MemoryArrivingReader:
        """A reader of arriving content; :class:`BlobUnknown` if not arriving."""
        writer = self.arriving.get(parse_digest(digest))
        if writer is None:
            raise BlobUnknown(f"blob {digest} is not arriving here")
        return MemoryArrivingReader(writer)
