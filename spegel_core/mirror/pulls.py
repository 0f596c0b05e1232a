"""What a pull asks of the mirror, apart from HTTP: local first, then peers.

The routes of :mod:`spegel_core.mirror.routes_v2` parse and check a request and
hand it here. :class:`PullService` finds the content (this node's store, else the
peers unless the request came from a peer), chooses how the bytes go out (a file
zero-copy, a peer's socket spliced, or chunks through Python) and accounts for the
answer once it has finished (:mod:`spegel_core.mirror.metered`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import TypeVar

from starlette.responses import Response

from spegel_core.errors import NotFound
from spegel_core.mirror import arriving
from spegel_core.mirror.blob_stream import BlobStream
from spegel_core.mirror.metered import MeteredResponse, Outcome
from spegel_core.mirror.peers import PeerFetcher
from spegel_core.mirror.ranges import parse_range
from spegel_core.mirror.responses import (
    FileRangeResponse,
    RelayResponse,
    StoreStreamResponse,
)
from spegel_core.mirror.service import Manifest, MirrorService
from spegel_core.mirror.singleflight import SingleFlight
from spegel_core.oci.reference import Reference
from spegel_core.protocols import (
    ArrivingServed,
    BytesServed,
    ContentStore,
    MetricsSink,
    MirrorRequest,
    Source,
    tag_key,
)

#: Where the bytes came from (local, peer): for people and tests, not for clients.
SOURCE_HEADER = "X-Spegel-Source"
OCTET_STREAM = "application/octet-stream"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Pull:
    """One parsed request for a manifest or a blob.

    :ivar registry: the registry the content comes from (``ns``).
    :ivar name: the repository.
    :ivar method: ``GET`` or ``HEAD``.
    :ivar path: the request path (for metrics and the debug page).
    :ivar started: ``time.perf_counter()`` when the request arrived.
    :ivar local_only: answer from this node's store only (a peer's request).
    :ivar zerocopy: the server can send files and splice sockets (``spegel.zerocopy``).
    :ivar client: the client's address (single flight: a fetcher never waits on itself).
    :ivar wait: seconds a peer's request may be held for content this node is about to
        receive (``X-Spegel-Wait``; 0: answer at once).
    :ivar assigned: the requester was sent here by single flight (it asked with
        ``X-Spegel-Wait``): arriving content is served even before its first byte.
    """

    registry: str
    name: str
    method: str
    path: str
    started: float
    local_only: bool = False
    zerocopy: bool = False
    client: str = ""
    wait: float = 0.0
    assigned: bool = False


class PullService:
    """Manifests and blobs for the routes, from the local store or from peers.

    :param local: the local lookups (tags, manifests, blob stats).
    :param store: the content store (to read blobs that have no file).
    :param peers: the peer path, or None when the node has no router.
    :param metrics: where request outcomes and bytes served go.
    :param arriving: serve peers content the store is still receiving
        (``--advertise-arriving``).
    :param flight: single flight (``--single-flight``), or None.
    """

    def __init__(self, local: MirrorService, store: ContentStore, peers: PeerFetcher | None,
                 metrics: MetricsSink, *, arriving: bool = False,
                 flight: SingleFlight | None = None) -> None:
        self.local = local
        self.store = store
        self.peers = peers
        self.metrics = metrics
        self.arriving = arriving
        self.flight = flight

    def __repr__(self) -> str:
        return f"<PullService peers={'on' if self.peers is not None else 'off'}>"

    # -- manifests ----------------------------------------------------------------------
    async def manifest(self, pull: Pull, tag: str | None, digest: str | None) -> Response:
        """The manifest named by ``tag`` or ``digest`` (exactly one of them is set)."""
        reference: Reference | None = None
        if tag is not None and digest is None:
            reference = Reference(pull.registry, pull.name, tag=tag)
        elif tag is not None or digest is None:
            raise ValueError("a manifest is named by a tag or by a digest, not both")
        self.local.check_registry(pull.registry)
        try:
            digest = await self._resolve(reference, digest)
            return self._manifest_response(pull, await self.local.local_manifest(digest),
                                           Source.LOCAL)
        except NotFound:
            if (reference is None and digest is not None and pull.local_only
                    and pull.wait > 0 and self.flight is not None
                    and await self.flight.hold(digest, pull.wait, whole=True)):
                # A child in single flight's tree: held until this node had it.
                return self._manifest_response(
                    pull, await self.local.local_manifest(digest), Source.LOCAL)
            peers = self._peers_for(pull)
            if peers is None:
                raise
            if digest is not None:  # by digest, or a tag this node resolved itself
                key, identifier = digest, digest
            elif reference is not None and self.local.tag_resolvable(reference):
                key, identifier = tag_key(reference), reference.identifier
            else:
                raise
        fetch = peers.manifest(pull.registry, pull.name, identifier, key, digest)
        if reference is None and digest is not None:
            fetch = self._peer_manifest(pull, fetch, digest)
        manifest = await self._from_peers(pull, "manifest", fetch)
        return self._manifest_response(pull, manifest, Source.PEER)

    async def _peer_manifest(self, pull: Pull, fetch: Awaitable[Manifest],
                             digest: str) -> Manifest:
        """A manifest by digest from the providers; with none, through single flight."""
        if self.flight is None or pull.method != "GET":
            return await fetch
        try:
            return await fetch
        except NotFound:
            return await self.flight.fetch_manifest(pull.registry, pull.name, digest,
                                                    pull.client)

    async def _resolve(self, reference: Reference | None, digest: str | None) -> str:
        if digest is not None:
            return digest
        if reference is None:
            raise ValueError("a manifest is named by a tag or by a digest")
        return await self.local.resolve_tag(reference)

    def _manifest_response(self, pull: Pull, manifest: Manifest, source: Source) -> Response:
        headers = {"Docker-Content-Digest": manifest.digest,
                   "Content-Length": str(len(manifest.data)), SOURCE_HEADER: source.value}
        body = b"" if pull.method == "HEAD" else manifest.data
        response = Response(body, media_type=manifest.media_type, headers=headers)
        return self._metered(pull, "manifest", source, response)

    # -- blobs ----------------------------------------------------------------------------
    async def blob(self, pull: Pull, digest: str, range_header: str | None) -> Response:
        """The blob ``digest``, or the single byte range ``range_header`` of it."""
        self.local.check_registry(pull.registry)
        try:
            info = await self.local.local_blob(digest)
        except NotFound:
            if pull.local_only and self.arriving:
                answer = await self._arriving_blob(pull, digest, range_header)
                if answer is not None:
                    return answer
            if (pull.local_only and pull.wait > 0 and self.flight is not None
                    and await self.flight.hold(digest, pull.wait)):
                return await self.blob(replace(pull, wait=0.0, assigned=True), digest,
                                       range_header)
            peers = self._peers_for(pull)
            if peers is None:
                raise
            return await self._blob_from_peers(pull, peers, digest, range_header)
        byte_range = parse_range(range_header, info.size)
        offset, count, status = 0, info.size, 200
        headers = {"Docker-Content-Digest": digest, "Accept-Ranges": "bytes",
                   SOURCE_HEADER: Source.LOCAL.value}
        if byte_range is not None:
            offset, count, status = byte_range.start, byte_range.length, 206
            headers["Content-Range"] = byte_range.content_range(info.size)
        response: Response
        if info.path is not None:
            response = FileRangeResponse(info.path, offset, count, status_code=status,
                                         headers=headers, media_type=OCTET_STREAM)
        else:
            response = StoreStreamResponse(self.store.read(digest, offset, count), count,
                                           status_code=status, headers=headers,
                                           media_type=OCTET_STREAM)
        return self._metered(pull, "blob", Source.LOCAL, response)

    async def _arriving_blob(self, pull: Pull, digest: str,
                             range_header: str | None) -> Response | None:
        """A peer asks for a blob this node is still receiving: serve it as it lands."""
        headers = {"Docker-Content-Digest": digest, "Accept-Ranges": "bytes",
                   SOURCE_HEADER: arriving.SOURCE}

        def sent(count: int) -> None:
            if count:
                self.metrics.emit(ArrivingServed(count))

        # A peer that found this node by lookup, not sent here by single flight, gets
        # only content that has started to arrive: nodes that start one download at the
        # same moment would otherwise stream from each other's empty ingests, in a
        # circle that never gets a byte (each 404 sends the asker to another provider
        # or upstream instead).
        assigned = pull.assigned or pull.wait > 0
        response = await arriving.arriving_response(self.store, digest, range_header,
                                                    headers, sent, started_only=not assigned)
        if response is None:
            return None
        return self._metered(pull, "blob", Source.LOCAL, response)

    async def _blob_from_peers(self, pull: Pull, peers: PeerFetcher, digest: str,
                               range_header: str | None) -> Response:
        if range_header is not None and parse_range(range_header, 2**63 - 1) is None:
            range_header = None  # several ranges: the whole blob, as RFC 9110 allows
        stream = await self._from_peers(
            pull, "blob", self._peer_blob(pull, peers, digest, range_header))
        headers = {"Docker-Content-Digest": digest, "Accept-Ranges": "bytes",
                   SOURCE_HEADER: Source.PEER.value}
        status = 200
        if range_header is not None:
            status = 206
            headers["Content-Range"] = (
                f"bytes {stream.start}-{stream.start + stream.length - 1}/{stream.size}")
        response: Response
        if pull.method == "HEAD":
            await stream.aclose()
        if stream.relay is not None and pull.method != "HEAD" and pull.zerocopy:
            response = RelayResponse(stream.relay, stream.length,
                                     source_timeout=peers.settings.request_timeout,
                                     status_code=status, headers=headers,
                                     media_type=OCTET_STREAM)
        else:
            response = StoreStreamResponse(stream.chunks, stream.length, status_code=status,
                                           headers=headers, media_type=OCTET_STREAM)
        return self._metered(pull, "blob", Source.PEER, response)

    async def _peer_blob(self, pull: Pull, peers: PeerFetcher, digest: str,
                         range_header: str | None) -> BlobStream:
        """From the providers; when there are none, through single flight (a claim)."""
        if self.flight is None or pull.method != "GET":
            return await peers.blob(pull.registry, pull.name, digest, range_header)
        with contextlib.suppress(NotFound):  # a node that holds it whole: no claim needed
            return await peers.blob(pull.registry, pull.name, digest, range_header,
                                    arriving=False)
        return await self.flight.fetch(pull.registry, pull.name, digest, range_header,
                                       pull.client)

    # -- shared -----------------------------------------------------------------------------
    def _peers_for(self, pull: Pull) -> PeerFetcher | None:
        """The peer path, unless this request must be answered from local content."""
        return None if pull.local_only else self.peers

    async def _from_peers(self, pull: Pull, kind: str, fetch: Awaitable[T]) -> T:
        """Await ``fetch``; a 404 from the peer path is a miss, recorded at once."""
        try:
            return await fetch
        except NotFound:
            self.metrics.emit(MirrorRequest(
                registry=pull.registry, kind=kind, source=Source.NONE, status=404, bytes=0,
                duration_s=time.perf_counter() - pull.started, method=pull.method,
                path=pull.path))
            raise

    def _metered(self, pull: Pull, kind: str, source: Source, response: Response) -> Response:
        def done(outcome: Outcome) -> None:
            self.metrics.emit(MirrorRequest(
                registry=pull.registry, kind=kind, source=source, status=outcome.status,
                bytes=outcome.sent, duration_s=outcome.duration_s, method=pull.method,
                path=pull.path, complete=outcome.complete))
            if outcome.complete and outcome.sent:
                self.metrics.emit(BytesServed(source, outcome.sent))

        return MeteredResponse(response, pull.started, done)
