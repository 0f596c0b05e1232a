"""The peer path: find providers through the router and fetch from them.

Everything fetched from a peer is verified: manifests before the first byte goes
out, blobs while they stream (the end of the body is held back until the digest
matches, so a corrupt blob is never completed as a 200). Where the server can
splice, a verified blob goes socket to socket too, hashed on the way from a
``tee(2)`` copy (:func:`~spegel_core.mirror.peer_relay.relay_verified`); elsewhere
it goes through Python in chunks, hashed in a worker thread. A provider that fails
is penalised for a while and the next one is tried; a stream that breaks
mid-way resumes from another provider with a Range request. Failures are typed
at the I/O edge (:mod:`spegel_core.mirror.peer_checks`) and the type says whom a
penalty counts against (:mod:`spegel_core.mirror.penalties`).

A ranged request is verified when the range covers the whole blob. A range of
part of a blob cannot be checked against the blob's digest without reading the
rest, so its bytes are relayed as the peer sent them (the extent is still
checked); the client verifies the digest of the blob it assembles (containerd
does) and the providers are nodes of the cluster (``docs/security.md``).

With ``--peer-blob-verify client`` whole blobs are relayed like such ranges:
not hashed here (sha256 on one core is slower than the hop), the client's own
digest check being the one that counts. Every body that is not hashed goes
socket to socket in the kernel where the server allows it
(:mod:`spegel_core.mirror.peer_relay`); lengths, ranges, digest headers and
resuming are checked and done the same way on both paths.

Only providers the router found are ever asked, at the addresses the router gives
(a provider with several is asked at each in turn; ``--peer-cidrs`` narrows which
addresses are trusted): repository names, tags,
digests and ``ns`` only ever become the path and query of a request to a peer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

import aiohttp

from spegel_core.config import SpegelConfig
from spegel_core.errors import (
    BlobUnknown,
    ManifestUnknown,
    PeerContentError,
    PeerDigestMismatch,
    PeerError,
    PeerLengthMismatch,
    PeersExhausted,
)
from spegel_core.mirror import auth
from spegel_core.mirror.arriving import committed_then_arriving
from spegel_core.mirror.blob_stream import STREAM_CHUNK, BlobStream, empty, stream_body
from spegel_core.mirror.hedging import hedged
from spegel_core.mirror.peer_checks import (
    check_digest_header,
    check_range,
    extent,
    status_error,
    transport_error,
)
from spegel_core.mirror.peer_relay import relay_blob, relay_verified
from spegel_core.mirror.penalties import PenaltyList
from spegel_core.mirror.responses import SpliceSink
from spegel_core.mirror.service import Manifest, ManifestCache
from spegel_core.oci.digest import compute_digest, split_digest
from spegel_core.oci.mediatypes import MANIFEST_TYPES, MAX_MANIFEST_SIZE, sniff_manifest_type
from spegel_core.peer_filter import PeerFilter
from spegel_core.protocols import (
    MetricsSink,
    Peer,
    PeerPenalised,
    ResolveDuration,
    Router,
    arriving_key,
)
from spegel_core.server import tee

log = logging.getLogger(__name__)

MIRRORED_HEADER = "X-Spegel-Mirrored"
#: A peer request may wait this many seconds for content the peer is about to receive
#: (single flight: a child asks its parent before the parent's bytes start).
WAIT_HEADER = "X-Spegel-Wait"
ACCEPT = ", ".join(sorted(MANIFEST_TYPES))
#: Verified blobs at least this long go socket to socket, hashed with ``tee(2)``, where
#: the server can splice; shorter ones (a pipe and a thread would cost more than they
#: save) and every blob under other servers go through Python in chunks.
TEE_MIN_LENGTH = 1024 * 1024
#: Keys whose providers are cached at most (each entry lives ``cache_ttl`` seconds).
MAX_CACHED_KEYS = 4096


@dataclass
class PeerSettings:
    """Tuning of the peer path (lookups, timeouts, penalties, pool, verification)."""

    resolve_timeout: float = 0.02
    resolve_retries: int = 3
    request_timeout: float = 3.0
    hedge_after: float = 0.25
    penalty: float = 30.0
    cache_ttl: float = 5.0
    pool_size: int = 256
    #: Networks providers may be in (``--peer-cidrs``); empty: any address.
    peer_cidrs: tuple[str, ...] = ()
    #: Who verifies whole blobs (``--peer-blob-verify``): this node or the client.
    blob_verify: Literal["mirror", "client"] = "mirror"
    #: Also ask providers still receiving a blob (``--advertise-arriving``).
    arriving: bool = True
    #: Sent with every peer request (``--basic-auth-dir``: the ``Authorization`` header).
    headers: tuple[tuple[str, str], ...] = ()
    #: aiohttp request tracing for the peer session (observers: a test that sees every
    #: connection the mirror makes). Read when the session is made, on first use.
    trace_configs: tuple[aiohttp.TraceConfig, ...] = ()


@dataclass
class _Cached:
    peers: list[Peer]
    expires: float


class PeerFetcher:
    """Lookups (cached briefly), a bounded keep-alive pool and the penalty list."""

    def __init__(self, router: Router, metrics: MetricsSink, settings: PeerSettings) -> None:
        self.router = router
        self.metrics = metrics
        self.settings = settings
        self._cache: dict[str, _Cached] = {}
        #: Who failed recently, and for what (``docs/security.md`` has the rules).
        self.penalty_list = PenaltyList(settings.penalty)
        self._trusted = PeerFilter(settings.peer_cidrs)
        #: Providers the router found outside ``--peer-cidrs`` (never asked).
        self.untrusted_providers = 0
        self._session: aiohttp.ClientSession | None = None
        #: Verified manifests fetched from peers (content-addressed, so safe to reuse).
        self.manifests = ManifestCache(4 * 1024 * 1024)

    @classmethod
    def from_config(cls, config: SpegelConfig, router: Router,
                    metrics: MetricsSink) -> PeerFetcher:
        """A fetcher tuned from the node's configuration."""
        return cls(router, metrics, PeerSettings(
            resolve_timeout=config.core.mirror_resolve_timeout,
            resolve_retries=max(1, config.core.mirror_resolve_retries),
            penalty=config.core.mirror_peer_penalty,
            peer_cidrs=tuple(config.core.peer_cidrs),
            blob_verify=config.core.peer_blob_verify,
            arriving=config.core.advertise_arriving,
            headers=auth.peer_headers(config),
        ))

    @property
    def session(self) -> aiohttp.ClientSession:
        """The keep-alive HTTP session to peers, made on first use."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.settings.pool_size, limit_per_host=32,
                                             keepalive_timeout=30, ttl_dns_cache=None,
                                             use_dns_cache=False)
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, trust_env=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=1.0,
                                              sock_read=self.settings.request_timeout),
                read_bufsize=STREAM_CHUNK, headers=dict(self.settings.headers),
                trace_configs=list(self.settings.trace_configs) or None,
            )
        return self._session

    async def aclose(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- providers ----------------------------------------------------------------
    def penalise(self, peer: Peer, error: PeerError, key: str) -> None:
        """Penalise ``peer`` for ``error`` met while fetching ``key``.

        A :class:`~spegel_core.errors.PeerContentError` counts against (peer, key),
        any other failure against the peer (:mod:`spegel_core.mirror.penalties`).
        """
        scope = self.penalty_list.add(peer, error, key)
        self.metrics.emit(PeerPenalised(error.kind, scope))
        entries = ([self._cache[key]] if key in self._cache else []) \
            if isinstance(error, PeerContentError) else self._cache.values()
        for cached in entries:  # cached providers come first: move this one last
            if peer in cached.peers:
                cached.peers.remove(peer)
                cached.peers.append(peer)

    @property
    def penalty_counts(self) -> Counter[str]:
        """Penalties given, by kind of failure: digest, stream, status, connect."""
        return Counter(self.penalty_list.counts)

    def _remember(self, key: str, found: list[Peer]) -> None:
        """Cache the providers of ``key``; expired entries go once the cache is large."""
        now = time.monotonic()
        if len(self._cache) >= MAX_CACHED_KEYS:
            for old in [k for k, entry in self._cache.items() if entry.expires <= now]:
                del self._cache[old]
            while len(self._cache) >= MAX_CACHED_KEYS:  # all fresh: drop the oldest
                del self._cache[next(iter(self._cache))]
        self._cache.pop(key, None)  # re-inserted last: the dict stays in insertion order
        self._cache[key] = _Cached(found, now + self.settings.cache_ttl)

    def penalised(self, peer: Peer, key: str | None = None) -> bool:
        """Whether ``peer`` is penalised for every key, or for ``key``."""
        return self.penalty_list.penalised(peer, key)

    @property
    def penalties(self) -> dict[str, float]:
        """Peers penalised for every key (``host:port``) and the seconds left."""
        return self.penalty_list.peers

    @property
    def content_penalties(self) -> dict[str, float]:
        """(peer, key) penalties (``host:port key``) and the seconds left."""
        return self.penalty_list.contents

    async def providers(self, key: str) -> AsyncIterator[Peer]:
        """Providers of ``key``: cached ones first, then a fresh lookup.

        The lookup gives up when no provider arrives within the resolve timeout
        (an idle timeout: each provider found restarts it). Providers penalised for
        ``key`` (or for every key) come last, the soonest forgiven first: never
        skipped, so a provider that is the only one left is still asked.
        """
        now = time.monotonic()
        cached = self._cache.get(key)
        tried: set[Peer] = set()
        deferred: list[Peer] = []
        if cached is not None and cached.expires > now:
            for peer in list(cached.peers):
                tried.add(peer)
                if self.penalised(peer, key):
                    deferred.append(peer)
                else:
                    yield peer
        found: list[Peer] = []
        started = time.perf_counter()
        lookup = self.router.lookup(key, self.settings.resolve_retries,
                                    self.settings.request_timeout)
        iterator = aiter(lookup)
        try:
            while True:
                try:
                    provider = await asyncio.wait_for(anext(iterator),
                                                      self.settings.resolve_timeout)
                except (StopAsyncIteration, TimeoutError):
                    break
                if not found:
                    self.metrics.emit(ResolveDuration(self.router.name,
                                                      time.perf_counter() - started, True))
                # A provider with several addresses is asked at each in turn: a
                # connection refused or timed out moves on to the next one.
                for peer in provider.addresses():
                    if not self._trusted.allows(peer.host):
                        self.untrusted_providers += 1
                        log.debug("provider %s is outside --peer-cidrs; not asked", peer.url)
                        continue
                    found.append(peer)
                    if peer in tried:
                        continue
                    tried.add(peer)
                    if self.penalised(peer, key):
                        deferred.append(peer)
                        continue
                    yield peer
        finally:
            close = getattr(iterator, "aclose", None)
            if close is not None:
                await close()
            if found:
                self._remember(key, found)
            else:
                self.metrics.emit(ResolveDuration(self.router.name,
                                                  time.perf_counter() - started, False))
        deferred.sort(key=lambda peer: self.penalty_list.expires(peer, key))
        for peer in deferred:
            yield peer

    def blob_providers(self, digest: str) -> AsyncIterator[Peer]:
        """Providers of a blob: those holding it whole first, then those receiving it.

        Those still receiving it come only with ``--advertise-arriving``; both lookups
        run at once.
        """
        if not self.settings.arriving:
            return self.providers(digest)
        return committed_then_arriving(self.providers(digest),
                                       self.providers(arriving_key(digest)))

    # -- manifests ----------------------------------------------------------------
    async def manifest(self, registry: str, name: str, reference: str,
                       key: str, digest: str | None) -> Manifest:
        """A manifest by tag (``digest`` None) or by digest, verified before use."""
        if digest is not None:
            cached = self.manifests.get(digest)
            if cached is not None:
                return cached
        won = await hedged(
            self, key, lambda peer: self._fetch_manifest(peer, registry, name, reference, digest))
        if won is None:
            raise ManifestUnknown(f"manifest {registry}/{name}:{reference} not found on any peer")
        manifest, _ = won
        self.manifests.put(manifest)
        return manifest

    async def manifest_from(self, peer: Peer, registry: str, name: str, digest: str,
                            wait: float) -> Manifest:
        """The manifest ``digest`` from ``peer``, which may hold the request ``wait`` s.

        ``peer`` holds it until it has the manifest (single flight: a parent in the
        tree, or the node fetching it upstream).

        :raises PeerError: the peer failed or answered wrongly.
        """
        manifest = await self._fetch_manifest(peer, registry, name, digest, digest, wait=wait)
        self.manifests.put(manifest)
        return manifest

    async def _fetch_manifest(self, peer: Peer, registry: str, name: str, reference: str,
                              digest: str | None, *, wait: float = 0.0) -> Manifest:
        url = f"{peer.url}/v2/{name}/manifests/{reference}"
        headers = {MIRRORED_HEADER: "true", "Accept": ACCEPT}
        if wait > 0:
            headers[WAIT_HEADER] = f"{wait:.3f}"
        try:
            async with self.session.get(
                url, params={"ns": registry}, headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.settings.request_timeout + wait),
                allow_redirects=False,  # a peer answers itself; never follow it elsewhere
            ) as response:
                if response.status != 200:
                    raise status_error(response.status, reference)
                data = await _read_bounded(response.content, MAX_MANIFEST_SIZE + 1)
                header_digest = response.headers.get("Docker-Content-Digest", "")
                media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise transport_error(exc) from exc
        if len(data) > MAX_MANIFEST_SIZE:
            raise PeerDigestMismatch("manifest too large")
        expected = digest or header_digest
        algorithm = split_digest(expected)[0] if expected.startswith("sha512:") else "sha256"
        actual = compute_digest(data, algorithm)
        if actual != expected:
            raise PeerDigestMismatch(
                f"manifest digest mismatch: expected {expected}, got {actual}")
        if media_type not in MANIFEST_TYPES:
            media_type = sniff_manifest_type(data) or ""
            if not media_type:
                raise PeerDigestMismatch("peer answered with something that is not a manifest")
        return Manifest(actual, media_type, data)

    # -- blobs ----------------------------------------------------------------------
    async def blob(self, registry: str, name: str, digest: str,
                   range_header: str | None, *, arriving: bool = True) -> BlobStream:
        """Open a blob on the first provider that answers; the stream resumes elsewhere.

        ``arriving`` False asks only providers that hold the whole blob (single flight
        assigns arriving ones itself: an ingest containerd just opened has no bytes).
        """
        async def open_checked(peer: Peer) -> tuple[aiohttp.ClientResponse, int, int, int]:
            response = await self._open_blob(peer, registry, name, digest, range_header)
            try:
                check_digest_header(response, digest)
                size, start, length = extent(response, range_header)
                check_range(range_header, size, start, length)
                return response, size, start, length
            except PeerError:
                response.release()
                raise

        won = await hedged(self, digest, open_checked,
                           discard=lambda result: result[0].release(),
                           peers=(self.blob_providers(digest) if arriving
                                  else self.providers(digest)))
        if won is None:
            raise BlobUnknown(f"blob {digest} not found on any peer")
        (response, size, start, length), peer = won
        return self._blob_stream(response, size, start, length, peer, registry, name, digest)

    async def blob_from(self, peer: Peer, registry: str, name: str, digest: str,
                        range_header: str | None, wait: float) -> BlobStream:
        """Open a blob on ``peer``, which may hold the request up to ``wait`` seconds.

        ``peer`` holds it until its bytes start (single flight: a parent in the tree);
        the stream then verifies and resumes like :meth:`blob`.

        :raises PeerError: the peer failed or answered wrongly.
        """
        response = await self._open_blob(peer, registry, name, digest, range_header, wait=wait)
        try:
            check_digest_header(response, digest)
            size, start, length = extent(response, range_header)
            check_range(range_header, size, start, length)
        except PeerError:
            response.release()
            raise
        return self._blob_stream(response, size, start, length, peer, registry, name, digest)

    def _blob_stream(self, response: aiohttp.ClientResponse, size: int, start: int,
                     length: int, peer: Peer, registry: str, name: str,
                     digest: str) -> BlobStream:
        stream = BlobStream(size, start, length, empty(), peer, response=response)
        # A range that covers the whole blob is verified like a full fetch.
        stream.verified = (start == 0 and length == size
                           and self.settings.blob_verify == "mirror")
        stream.chunks = stream_body(self, stream, response, registry, name, digest,
                                   verify=stream.verified)
        if not stream.verified:
            async def relay(sink: SpliceSink) -> None:
                await relay_blob(self, stream, response, registry, name, digest, sink)
            stream.relay = relay
        elif tee.AVAILABLE and length >= TEE_MIN_LENGTH:
            async def relay_hashed(sink: SpliceSink) -> None:
                await relay_verified(self, stream, response, registry, name, digest, sink)
            stream.relay = relay_hashed
        return stream

    async def _open_blob(self, peer: Peer, registry: str, name: str, digest: str,
                         range_header: str | None, *, wait: float = 0.0
                         ) -> aiohttp.ClientResponse:
        headers = {MIRRORED_HEADER: "true", "Accept-Encoding": "identity"}
        if range_header is not None:
            headers["Range"] = range_header
        sock_read = self.settings.request_timeout
        if wait > 0:
            headers[WAIT_HEADER] = f"{wait:.3f}"
            sock_read = max(sock_read, wait + 1.0)
        try:
            response = await self.session.get(f"{peer.url}/v2/{name}/blobs/{digest}",
                                              params={"ns": registry}, headers=headers,
                                              allow_redirects=False,
                                              timeout=aiohttp.ClientTimeout(
                                                  total=None, sock_connect=1.0,
                                                  sock_read=sock_read))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise transport_error(exc) from exc
        expected = 206 if range_header is not None else 200
        if response.status != expected:
            response.release()
            raise status_error(response.status, f"blob {digest}")
        return response

    async def resume(self, registry: str, name: str, digest: str, position: int, end: int,
                     stream: BlobStream) -> tuple[aiohttp.ClientResponse, Peer]:
        """The rest of ``stream`` (bytes ``position``-``end``) from a provider not yet asked."""
        async for peer in self.blob_providers(digest):
            if peer == stream.peer or peer in stream.resumed:
                continue
            try:
                response = await self._open_blob(peer, registry, name, digest,
                                                 f"bytes={position}-{end}")
            except PeerError as exc:
                self.penalise(peer, exc, digest)
                continue
            try:
                check_digest_header(response, digest)
                size, start, length = extent(response, "resume")
                if (size, start, length) != (stream.size, position, end - position + 1):
                    raise PeerLengthMismatch(
                        f"resumed with bytes {start}+{length} of {size}, asked for "
                        f"{position}-{end} of {stream.size}")
            except PeerError as exc:
                response.release()
                self.penalise(peer, exc, digest)
                continue
            log.info("resuming %s at byte %d from %s", digest, position, peer.url)
            stream.resumed.append(peer)
            return response, peer
        raise PeersExhausted(f"no provider left to resume {digest} at byte {position}")


async def _read_bounded(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body, or its first ``limit`` bytes or more when it is longer.

    Read to the end: a body that stops short of its Content-Length raises
    (aiohttp's payload error), even when the bytes that came are a valid manifest.
    """
    parts: list[bytes] = []
    size = 0
    async for chunk in content.iter_any():
        parts.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(parts)
