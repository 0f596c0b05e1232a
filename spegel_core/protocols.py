"""The async interfaces of the hot path, and the value types they exchange.

Hooks (``spegel_core.hookspecs``) run at start-up and return objects that satisfy
these protocols; requests only ever await methods of those objects.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from spegel_core.oci.reference import Reference


# ---------------------------------------------------------------------------
# Content store
# ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ContentInfo:
    """What a store knows about one piece of content.

    ``path`` is a regular file holding exactly the content's bytes, when the store
    has one: the mirror then serves it zero-copy with ``sendfile``.
    """

    digest: str
    size: int
    media_type: str | None = None
    path: str | None = None


@dataclass(frozen=True, slots=True)
class Image:
    """A tag reference the store holds and the digest it points to."""

    reference: Reference
    digest: str


class StoreEventKind(enum.Enum):
    """What changed in a store."""

    IMAGE_CREATED = "image_created"
    IMAGE_DELETED = "image_deleted"
    CONTENT_CREATED = "content_created"
    CONTENT_DELETED = "content_deleted"
    #: Content started arriving (``key`` is its digest): peers may read it as it lands
    #: (stores with the optional :class:`ArrivingStore` part only).
    CONTENT_ARRIVING = "content_arriving"
    #: Arriving content stopped arriving without being committed (its download failed
    #: or its writer went away). A commit is ``CONTENT_CREATED`` instead.
    ARRIVING_ENDED = "arriving_ended"
    #: The store lost its backend (or got it back); consumers should list again.
    RESYNC = "resync"


@dataclass(frozen=True, slots=True)
class StoreEvent:
    """One change in a store, as :meth:`ContentStore.subscribe` yields it."""

    kind: StoreEventKind
    #: A digest for content events, a tag reference string for image events, "" for RESYNC.
    key: str = ""
    #: For image events: the digest the tag pointed to, when known.
    digest: str | None = None


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """Whether a store can serve now; ``detail`` says why not (or what is degraded)."""

    ready: bool
    detail: str = ""


@runtime_checkable
class ContentStore(Protocol):
    """Where a node's content lives (containerd, an OCI layout, a plugin's own)."""

    name: str

    async def start(self) -> None:
        """Connect and load whatever is needed to answer; called once in the lifespan."""

    async def aclose(self) -> None:
        """Release every resource; safe to call twice."""

    async def list_images(self) -> list[Image]:
        """Every tag reference held, with its digest."""

    async def list_digests(self) -> list[str]:
        """Every digest whose bytes are held locally (indexes, manifests, configs, layers)."""

    async def resolve(self, reference: Reference) -> str:
        """Digest of a tag reference; raises :class:`spegel_core.errors.NotFound`."""

    async def stat(self, digest: str) -> ContentInfo:
        """Size, media type and (if any) file path; raises ``NotFound`` if not held."""

    def read(self, digest: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream ``length`` bytes (to the end when None) from ``offset``."""

    def subscribe(self) -> AsyncIterator[StoreEvent]:
        """Events as content comes and goes; ends when the store is closed."""

    def status(self) -> StoreStatus:
        """Whether the store can answer now, and why not."""


# ---------------------------------------------------------------------------
# Content store, optional part: content that is still arriving
# ---------------------------------------------------------------------------
#: Prefix of the key string under which arriving content is advertised.
ARRIVING_PREFIX = "arriving/"


def tag_key(reference: Reference) -> str:
    """The key string a tag is advertised under: ``registry/repository:tag``."""
    return f"{reference.registry}/{reference.repository}:{reference.tag}"


def arriving_key(digest: str) -> str:
    """The key string arriving content is advertised under: ``arriving/<digest>``.

    A distinct key (not a flag on the provider record) keeps every router and its
    wire format unchanged: a requester looks the two keys up side by side.
    """
    return ARRIVING_PREFIX + digest


@runtime_checkable
class ArrivingContent(Protocol):
    """One blob that is still being written, opened for reading as it lands.

    ``size`` is the expected final size. Bytes below what :meth:`wait` returned are
    final (a store offers only content written in order). Close it with :meth:`aclose`.
    """

    digest: str
    size: int

    def fileno(self) -> int | None:
        """A descriptor of a file holding the bytes written so far, or None.

        The mirror serves them with ``sendfile``; with None, :meth:`read` is used.
        """

    async def wait(self, offset: int, timeout: float) -> int:  # noqa: ASYNC109
        """How many bytes exist, once that is more than ``offset`` (``offset < size``).

        Waits without polling for more bytes. Raises
        :class:`spegel_core.errors.ArrivingAborted` when the content will not
        complete (deleted without a commit, its writer gone, or nothing new for
        ``timeout`` seconds).
        """

    async def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` (below what :meth:`wait` returned)."""

    async def aclose(self) -> None:
        """Release the descriptor; safe to call twice."""


@runtime_checkable
class ArrivingStore(Protocol):
    """The optional part of :class:`ContentStore` for content still arriving.

    A store that can see downloads in progress (containerd's ingests) implements
    these two methods and publishes ``CONTENT_ARRIVING`` / ``ARRIVING_ENDED``
    events; the node then advertises :func:`arriving_key` and serves the bytes to
    peers while they land. A store without it (the OCI layout) is simply not an
    ``ArrivingStore``.
    """

    async def list_arriving(self) -> list[str]:
        """Digests of the content arriving now (not committed, writer alive)."""

    async def open_arriving(self, digest: str) -> ArrivingContent:
        """Open arriving content.

        Committed content is read with ``read``; a store may still open content
        committed a moment ago, whole.

        :raises spegel_core.errors.BlobUnknown: ``digest`` is not arriving.
        """


# ---------------------------------------------------------------------------
# Discovery and routing
# ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PeerAddress:
    """A router address (UDP for Kademlia) of a peer to bootstrap from."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Peer:
    """A node that holds some content: where its mirror listens.

    ``alternates`` are the node's other mirror addresses (``(host, port)``, best
    first), e.g. the IPv6 address of a dual-stack node found at its IPv4 one; the
    mirror tries them in order after ``host:port`` (:meth:`addresses`).
    """

    host: str
    port: int
    node_id: bytes = b""
    alternates: tuple[tuple[str, int], ...] = ()

    def addresses(self) -> list[Peer]:
        """This peer at each of its addresses, ``host:port`` first, without alternates."""
        if not self.alternates:
            return [self]
        first = Peer(self.host, self.port, self.node_id)
        return [first, *(Peer(host, port, self.node_id) for host, port in self.alternates
                         if (host, port) != (self.host, self.port))]

    @property
    def url(self) -> str:
        """``http://host:port`` of the peer's mirror (IPv6 hosts bracketed)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@runtime_checkable
class Discovery(Protocol):
    """A source of bootstrap peers (headless DNS, a static list, a plugin's own)."""

    name: str
    #: Seconds between refreshes once the router has a healthy table.
    refresh_interval: float

    async def bootstrap_peers(self) -> list[PeerAddress]:
        """Current bootstrap addresses; never raises for a transient failure (returns [])."""

    async def aclose(self) -> None:
        """Release the source's resources."""


@dataclass(frozen=True, slots=True)
class RouterStatus:
    """A router's state for the status endpoint and the debug page."""

    node_id: str
    address: str
    peers: int
    advertised_keys: int
    detail: str = ""
    extra: dict[str, object] = field(default_factory=dict)


@runtime_checkable
class Router(Protocol):
    """Finds which peers hold a key and tells others which keys this node holds."""

    name: str

    async def start(self) -> None:
        """Start the router; joining the network may go on in the background."""

    async def aclose(self) -> None:
        """Stop the router and release its resources."""

    async def advertise(self, keys: Sequence[str]) -> None:
        """Announce (and keep re-announcing) that this node holds ``keys``."""

    async def withdraw(self, keys: Sequence[str]) -> None:
        """Stop announcing ``keys``."""

    def lookup(self, key: str, count: int, timeout: float) -> AsyncIterator[Peer]:
        """Yield up to ``count`` providers of ``key`` as they are found, within ``timeout`` s."""

    def status(self) -> RouterStatus:
        """The router's state now."""


# ---------------------------------------------------------------------------
# Routing, optional part: single flight (one upstream fetch per digest)
# ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ClaimAnswer:
    """The rendezvous' answer to a claim of a digest.

    :ivar go: this node fetches from upstream (its mirror answers 404 at once).
    :ivar fetcher: the node told go (this node when ``go``).
    :ivar parent: whom to stream from when not ``go``: a member of the flight's tree
        with room for one more child (None when ``go``).
    :ivar depth: this node's depth in the tree (0 for the fetcher).
    :ivar ttl: seconds the claim lasts unless claimed again (renewed).
    """

    go: bool
    fetcher: Peer
    parent: Peer | None
    depth: int
    ttl: float


@runtime_checkable
class SingleFlightRouter(Protocol):
    """The optional part of :class:`Router` that coordinates one upstream fetch.

    On a miss the mirror claims the digest at its rendezvous (for a DHT: the node
    closest to the digest's key, possibly this node). The first live claimant is
    told go; later ones get a parent to stream from, at most ``fanout`` children per
    parent. All of it is soft state: claiming again renews (and returns the same
    answer while the flight lives); a claim not renewed within ``ttl`` is gone.
    """

    async def claim(self, digest: str, fanout: int, ttl: float,
                    timeout: float) -> ClaimAnswer | None:  # noqa: ASYNC109
        """Claim (or renew a claim of) ``digest`` for this node.

        Returns None when no rendezvous answered within ``timeout`` seconds: the
        caller then behaves as without single flight.
        """

    async def release(self, digest: str) -> None:
        """Leave the flight of ``digest`` (best effort; the fetcher leaving ends it)."""

    def flights(self) -> list[dict[str, object]]:
        """The flights this node holds as a rendezvous (for the debug page)."""


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------
class Source(enum.Enum):
    """Where served content came from."""

    LOCAL = "local"
    PEER = "peer"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class MirrorRequest:
    """One answered mirror request, emitted when its response has finished.

    ``bytes`` are the body bytes actually sent and ``duration_s`` runs to the last
    of them. ``complete`` is False for a response that did not finish (the client
    went away, or a peer's stream was cut off): it was not served, and no
    :class:`BytesServed` is emitted for it.
    """

    registry: str
    kind: str  # "manifest" | "blob"
    source: Source
    status: int
    bytes: int
    duration_s: float
    method: str = "GET"
    path: str = ""
    complete: bool = True


@dataclass(frozen=True, slots=True)
class ResolveDuration:
    """How long a router lookup took and whether it found a provider."""

    router: str
    duration_s: float
    found: bool


@dataclass(frozen=True, slots=True)
class BytesServed:
    """Body bytes served, by where they came from."""

    source: Source
    bytes: int


@dataclass(frozen=True, slots=True)
class AdvertisedKeys:
    """How many keys of a kind this node advertises for a registry."""

    kind: str  # "tag" | "digest" | "content"
    registry: str
    count: int


@dataclass(frozen=True, slots=True)
class ArrivingServed:
    """Bytes of arriving content (still downloading here) served to a peer."""

    bytes: int


@dataclass(frozen=True, slots=True)
class PeerCount:
    """Contacts the router knows now."""

    count: int


@dataclass(frozen=True, slots=True)
class DhtMessage:
    """A DHT message of ``type`` sent, received, timed out or failed."""

    type: str
    outcome: str  # "sent" | "received" | "timeout" | "error"


@dataclass(frozen=True, slots=True)
class DroppedDatagram:
    """A datagram dropped, and why (a short label)."""

    reason: str


@dataclass(frozen=True, slots=True)
class DnsQuery:
    """One DNS query for bootstrap peers: its duration and result."""

    duration_s: float
    result: str  # "ok" | "nxdomain" | "timeout" | "error"


@dataclass(frozen=True, slots=True)
class StoreConnection:
    """The store connected to its backend (or lost it)."""

    connected: bool


@dataclass(frozen=True, slots=True)
class PeerPenalised:
    """A provider was penalised, read from the type of its failure.

    ``kind`` is ``digest``, ``stream``, ``status`` or ``connect``; ``scope`` is ``peer``
    (every key: refused, timeout, broken stream, 5xx) or ``content`` (that key only:
    404, digest or length mismatch, malformed head).
    """

    kind: str
    scope: str


@dataclass(frozen=True, slots=True)
class FlightClaim:
    """A claim of a digest was answered.

    ``role`` is ``go`` (this node fetches upstream), ``wait`` (it streams from a
    parent), ``self`` (the fetcher's own containerd asked this node: 404 at once) or
    ``unreachable`` (no rendezvous answered: 404, as without single flight).
    ``depth`` is this node's depth in the tree.
    """

    role: str
    depth: int = 0
    duration_s: float = 0.0


@dataclass(frozen=True, slots=True)
class FlightWait:
    """A waiting request ended.

    ``outcome`` is ``bytes`` (its parent's bytes came; an upstream fetch avoided) or
    ``timeout`` / ``failed`` (404: containerd goes upstream).
    ``seconds`` is the wait before the first byte (or the 404).
    """

    outcome: str
    seconds: float


MetricEvent = (
    MirrorRequest | ResolveDuration | BytesServed | AdvertisedKeys | PeerCount | DhtMessage
    | DroppedDatagram | DnsQuery | StoreConnection | PeerPenalised | ArrivingServed
    | FlightClaim | FlightWait
)


@runtime_checkable
class MetricsSink(Protocol):
    """Receives typed events. Must not block; errors are logged and dropped by the core."""

    def emit(self, event: MetricEvent) -> None:
        """Record ``event``."""
