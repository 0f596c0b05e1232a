"""The Prometheus families of one node, and the sink that moves them on each event.

Names and meanings follow Spegel's (so its dashboards and alerts keep working);
the figures Spegel does not have are named in the same style. Every family lives
in the node's own :class:`~prometheus_client.CollectorRegistry`, never the global
one, so several nodes in one process (tests) do not collide.

Each event updates its family at once: a scrape always shows the figures as of
the last event, never a batch refreshed on a timer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from spegel_core.protocols import (
    AdvertisedKeys,
    ArrivingServed,
    BytesServed,
    DhtMessage,
    DnsQuery,
    DroppedDatagram,
    FlightClaim,
    FlightWait,
    MetricEvent,
    MirrorRequest,
    PeerCount,
    PeerPenalised,
    ResolveDuration,
    Source,
    StoreConnection,
)
from spegel_prometheus.recent import RecentRequests

#: Spegel's HTTP latency buckets (Prometheus' Go client defaults), seconds.
HTTP_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Spegel's response size buckets: 1 KiB times powers of 5, up to about 2 GB.
HTTP_SIZE_BUCKETS = tuple(1024.0 * 5**i for i in range(10))
#: Lookups on a LAN take milliseconds; the resolve timeout is 20 ms by default.
RESOLVE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DNS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Distinct registry label values kept before the rest are counted as "other": the
#: ``ns`` query parameter comes from clients, and a label per value would grow forever.
MAX_REGISTRIES = 64
OTHER = "other"

#: Every family this plugin exports: the dashboard test and docs/metrics.md check
#: themselves against it.
EXPORTED = (
    "spegel_mirror_requests_total",
    "spegel_mirror_last_success_timestamp_seconds",
    "spegel_resolve_duration_seconds",
    "spegel_advertised_image_tags",
    "spegel_advertised_image_digests",
    "spegel_advertised_content_digests",
    "http_request_duration_seconds",
    "http_response_size_bytes",
    "http_requests_inflight",
    "spegel_mirror_bytes_total",
    "spegel_routing_table_peers",
    "spegel_dht_messages_total",
    "spegel_dht_dropped_datagrams_total",
    "spegel_dns_query_duration_seconds",
    "spegel_store_connected",
    "spegel_penalised_peers",
    "spegel_peer_penalties_total",
    "spegel_advertised_arriving_digests",
    "spegel_arriving_bytes_served_total",
    # prometheus_client's process collector (Linux /proc), as the Go original's client has.
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_start_time_seconds",
    "process_open_fds",
    "process_max_fds",
    "spegel_single_flight_claims_total",
    "spegel_single_flight_depth",
    "spegel_single_flight_wait_seconds",
    "spegel_single_flight_upstream_avoided_total",
)

_created_disabled = False


def _no_created_series() -> None:
    """Spegel's exposition has no ``*_created`` series; prometheus-client's switch is global."""
    global _created_disabled
    if not _created_disabled:
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        _created_disabled = True


class _BoundedLabel:
    """Label values as given until ``limit`` distinct ones were seen, then ``other``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) >= self.limit:
            return OTHER
        self.seen.add(value)
        return value


class PrometheusSink:
    """A :class:`~spegel_core.protocols.MetricsSink` holding one node's Prometheus families.

    :param recent: how many requests :attr:`recent` keeps for the debug page.
    """

    def __init__(self, *, recent: int = 100) -> None:
        _no_created_series()
        self.registry = r = CollectorRegistry(auto_describe=True)
        # Memory, CPU and descriptors of this process, for alerts (the Go original has them).
        ProcessCollector(registry=r)
        self.recent = RecentRequests(recent)
        self._registry_label = _BoundedLabel(MAX_REGISTRIES)
        # -- Spegel's ---------------------------------------------------------------
        self.mirror_requests = Counter(
            "spegel_mirror_requests", "Total number of mirror requests.",
            ["registry", "cache"], registry=r)
        self.last_success = Gauge(
            "spegel_mirror_last_success_timestamp_seconds",
            "The timestamp of the last successful mirror request.", registry=r)
        self.resolve_duration = Histogram(
            "spegel_resolve_duration_seconds", "The duration for router to resolve a peer.",
            ["router"], buckets=RESOLVE_BUCKETS, registry=r)
        self.advertised = {
            kind: Gauge(name, help_text, ["registry"], registry=r)
            for kind, name, help_text in (
                ("tag", "spegel_advertised_image_tags",
                 "Number of image tags advertised to be available."),
                ("digest", "spegel_advertised_image_digests",
                 "Number of image digests advertised to be available."),
                ("content", "spegel_advertised_content_digests",
                 "Number of content digests advertised to be available."),
                ("arriving", "spegel_advertised_arriving_digests",
                 "Number of digests advertised as arriving (still downloading here)."),
            )
        }
        self.http_duration = Histogram(
            "http_request_duration_seconds", "The latency of the HTTP requests.",
            ["handler", "method", "code"], buckets=HTTP_DURATION_BUCKETS, registry=r)
        self.http_size = Histogram(
            "http_response_size_bytes", "The size of the HTTP responses.",
            ["handler", "method", "code"], buckets=HTTP_SIZE_BUCKETS, registry=r)
        self.http_inflight = Gauge(
            "http_requests_inflight",
            "The number of inflight requests being handled at the same time.",
            ["handler"], registry=r)
        # -- ours, in the same style ------------------------------------------------------
        self.bytes = Counter(
            "spegel_mirror_bytes", "Bytes of content served by the mirror, by where they "
            "came from (local: this node's store, peer: streamed from another node).",
            ["source"], registry=r)
        self.peers = Gauge(
            "spegel_routing_table_peers", "Number of peers in the router's routing table.",
            registry=r)
        self.dht_messages = Counter(
            "spegel_dht_messages", "DHT messages by type and outcome "
            "(sent, received, timeout, error).", ["type", "outcome"], registry=r)
        self.dropped = Counter(
            "spegel_dht_dropped_datagrams", "Datagrams dropped before decoding, by reason.",
            ["reason"], registry=r)
        self.dns_duration = Histogram(
            "spegel_dns_query_duration_seconds",
            "Duration of DNS bootstrap queries, by result.", ["result"],
            buckets=DNS_BUCKETS, registry=r)
        self.store_connected = Gauge(
            "spegel_store_connected",
            "1 while the content store can answer (connected to its backend), else 0.",
            registry=r)
        self.penalised = Gauge(
            "spegel_penalised_peers",
            "Number of peers on the penalty list (failed or served bad bytes recently).",
            registry=r)
        self.penalties = Counter(
            "spegel_peer_penalties", "Penalties given to providers, by the kind of failure "
            "(digest, stream, status, connect) and whom it counts against (peer, content).",
            ["kind", "scope"], registry=r)
        self.arriving_bytes = Counter(
            "spegel_arriving_bytes_served", "Bytes of content still arriving on this node "
            "(being downloaded by its containerd) served to peers.", registry=r)
        self.flight_claims = Counter(
            "spegel_single_flight_claims", "Claims of digests at their rendezvous, by the "
            "answer: go (this node fetched upstream), wait (streamed from a parent), self (the "
            "fetcher's own containerd asked: 404 at once), unreachable (no rendezvous).",
            ["role"], registry=r)
        self.flight_depth = Histogram(
            "spegel_single_flight_depth", "Depth of this node in a flight's tree when claimed "
            "(0: the fetcher).", buckets=(0, 1, 2, 3, 4, 5, 6, 8, 10), registry=r)
        self.flight_wait = Histogram(
            "spegel_single_flight_wait_seconds", "Wait of a held request before its parent's "
            "first byte (outcome bytes: an upstream fetch avoided) or its 404 (timeout).",
            ["outcome"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
            registry=r)
        self.flight_avoided = Counter(
            "spegel_single_flight_upstream_avoided", "Fetches this node's containerd did not "
            "make upstream because its parent in a flight's tree streamed the bytes.",
            registry=r)
        self._handlers: dict[type[Any], Callable[[Any], None]] = {
            FlightClaim: self._flight_claim,
            FlightWait: self._flight_wait,
            ArrivingServed: lambda e: self.arriving_bytes.inc(e.bytes),
            MirrorRequest: self._mirror_request,
            ResolveDuration: self._resolve,
            BytesServed: self._bytes,
            AdvertisedKeys: self._advertised,
            PeerCount: lambda e: self.peers.set(e.count),
            DhtMessage: lambda e: self.dht_messages.labels(e.type, e.outcome).inc(),
            DroppedDatagram: lambda e: self.dropped.labels(e.reason).inc(),
            DnsQuery: lambda e: self.dns_duration.labels(e.result).observe(e.duration_s),
            StoreConnection: lambda e: self.store_connected.set(1 if e.connected else 0),
            PeerPenalised: lambda e: self.penalties.labels(e.kind, e.scope).inc(),
        }

    def _flight_claim(self, event: FlightClaim) -> None:
        self.flight_claims.labels(event.role).inc()
        if event.role in ("go", "wait"):
            self.flight_depth.observe(event.depth)

    def _flight_wait(self, event: FlightWait) -> None:
        self.flight_wait.labels(event.outcome).observe(event.seconds)
        if event.outcome == "bytes":
            self.flight_avoided.inc()

    def emit(self, event: MetricEvent) -> None:
        """Update the metric that ``event``'s type maps to; other events are ignored."""
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def watch_penalties(self, count: Callable[[], int]) -> None:
        """Read the number of penalised peers from ``count`` at every scrape."""
        self.penalised.set_function(count)

    # -- handlers -----------------------------------------------------------------------
    def _mirror_request(self, event: MirrorRequest) -> None:
        self.recent.add(event)
        if event.source is Source.LOCAL:
            return  # answered from this node's store: bytes by source and HTTP metrics
        if not event.complete:
            return  # cut off or abandoned: neither a hit nor a miss
        registry = self._registry_label(event.registry)
        if event.source is Source.PEER:
            self.mirror_requests.labels(registry, "hit").inc()
            self.last_success.set(time.time())
        else:
            self.mirror_requests.labels(registry, "miss").inc()

    def _resolve(self, event: ResolveDuration) -> None:
        if event.found:  # Spegel's meaning: the time it took to find a peer
            self.resolve_duration.labels(event.router).observe(event.duration_s)

    def _bytes(self, event: BytesServed) -> None:
        self.bytes.labels(event.source.value).inc(event.bytes)
        self.recent.bytes[event.source.value] += event.bytes

    def _advertised(self, event: AdvertisedKeys) -> None:
        gauge = self.advertised.get(event.kind)
        if gauge is not None:
            gauge.labels(event.registry).set(event.count)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return prometheus_client.generate_latest(self.registry)

    def __repr__(self) -> str:
        return f"<PrometheusSink recent={len(self.recent)}>"
