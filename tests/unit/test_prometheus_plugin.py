"""The Prometheus plugin in-process: event to family, HTTP middleware, debug page."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from spegel_core.cli.main import main
from spegel_core.config import SpegelConfig
from spegel_core.mirror.app import create_app, metrics_app_of
from spegel_core.plugin_manager import PluginManager
from spegel_core.protocols import (
    AdvertisedKeys,
    BytesServed,
    DhtMessage,
    DnsQuery,
    DroppedDatagram,
    MirrorRequest,
    PeerCount,
    PeerPenalised,
    ResolveDuration,
    Source,
    StoreConnection,
)
from spegel_core.testing.fakes import MemoryContentStore
from spegel_prometheus import EXPORTED, PrometheusSink
from spegel_prometheus.metrics import MAX_REGISTRIES
from spegel_prometheus.plugin import sink_of


def samples(sink: PrometheusSink) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = sink.exposition().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(sink: PrometheusSink, name: str, **labels: str) -> float | None:
    return sink.registry.get_sample_value(name, labels)


def every_event() -> list[Any]:
    return [
        MirrorRequest("docker.io", "blob", Source.PEER, 200, 100, 0.01),
        MirrorRequest("docker.io", "manifest", Source.NONE, 404, 0, 0.02),
        MirrorRequest("docker.io", "blob", Source.LOCAL, 200, 50, 0.001),
        ResolveDuration("kademlia", 0.003, True),
        ResolveDuration("kademlia", 0.02, False),
        BytesServed(Source.PEER, 100),
        BytesServed(Source.LOCAL, 50),
        AdvertisedKeys("tag", "docker.io", 2),
        AdvertisedKeys("digest", "docker.io", 1),
        AdvertisedKeys("content", "", 7),
        PeerCount(4),
        DhtMessage("find_node", "sent"),
        DroppedDatagram("mac"),
        DnsQuery(0.004, "ok"),
        StoreConnection(True),
        PeerPenalised("status", "content"),
    ]


def test_each_event_moves_its_family_at_once() -> None:
    sink = PrometheusSink()
    for event in every_event():
        sink.emit(event)
    assert value(sink, "spegel_mirror_requests_total", registry="docker.io", cache="hit") == 1
    assert value(sink, "spegel_mirror_requests_total", registry="docker.io", cache="miss") == 1
    assert (value(sink, "spegel_mirror_last_success_timestamp_seconds") or 0) > 1.7e9
    # Only resolves that found a peer are timed (Spegel's meaning).
    assert value(sink, "spegel_resolve_duration_seconds_count", router="kademlia") == 1
    assert value(sink, "spegel_mirror_bytes_total", source="peer") == 100
    assert value(sink, "spegel_mirror_bytes_total", source="local") == 50
    assert value(sink, "spegel_advertised_image_tags", registry="docker.io") == 2
    assert value(sink, "spegel_advertised_image_digests", registry="docker.io") == 1
    assert value(sink, "spegel_advertised_content_digests", registry="") == 7
    assert value(sink, "spegel_routing_table_peers") == 4
    assert value(sink, "spegel_dht_messages_total", type="find_node", outcome="sent") == 1
    assert value(sink, "spegel_dht_dropped_datagrams_total", reason="mac") == 1
    assert value(sink, "spegel_dns_query_duration_seconds_count", result="ok") == 1
    assert value(sink, "spegel_store_connected") == 1
    assert value(sink, "spegel_peer_penalties_total", kind="status", scope="content") == 1
    sink.emit(StoreConnection(False))
    assert value(sink, "spegel_store_connected") == 0
    assert sink.recent.hits == 1 and sink.recent.misses == 1 and sink.recent.local == 1
    assert sink.recent.hit_ratio == 0.5


def test_exported_names_are_the_registry_families() -> None:
    sink = PrometheusSink()
    names = {metric.name for metric in sink.registry.collect()}
    # prometheus-client names counter families without their _total suffix.
    assert {name.removesuffix("_total") for name in EXPORTED} == names
    assert not any(name.endswith("_created") for name, _ in samples(sink))


def test_nodes_in_one_process_do_not_share_figures() -> None:
    one, two = PrometheusSink(), PrometheusSink()
    one.emit(PeerCount(3))
    assert value(one, "spegel_routing_table_peers") == 3
    assert value(two, "spegel_routing_table_peers") == 0


def test_client_chosen_registries_cannot_grow_the_label_set() -> None:
    sink = PrometheusSink()
    for i in range(MAX_REGISTRIES + 10):
        sink.emit(MirrorRequest(f"r{i}.example", "blob", Source.NONE, 404, 0, 0.001))
    registries = {dict(labels)["registry"] for name, labels in samples(sink)
                  if name == "spegel_mirror_requests_total"}
    assert len(registries) == MAX_REGISTRIES + 1 and "other" in registries
    assert value(sink, "spegel_mirror_requests_total", registry="other", cache="miss") == 10


@pytest.fixture
def app_and_sink(spegel_pm: PluginManager, make_config: Callable[..., SpegelConfig]
                 ) -> tuple[FastAPI, PrometheusSink]:
    app = create_app(make_config(content_store="memory"), spegel_pm,
                     store=MemoryContentStore())
    sink = sink_of(app.state.node.view())
    assert sink is not None
    return app, sink


async def test_http_metrics_by_handler_method_and_code(
        app_and_sink: tuple[FastAPI, PrometheusSink]) -> None:
    app, sink = app_and_sink
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
            assert (await client.get("/v2/")).status_code == 200
            missing = await client.head(f"/v2/library/x/blobs/sha256:{'0' * 64}")
            assert missing.status_code == 404
            assert (await client.get("/livez")).status_code == 200
            assert (await client.get("/no/such/page")).status_code == 404
    duration = "http_request_duration_seconds_count"
    assert value(sink, duration, handler="/v2/*", method="GET", code="200") == 1
    assert value(sink, duration, handler="/v2/*", method="HEAD", code="404") == 1
    assert value(sink, duration, handler="/livez", method="GET", code="200") == 1
    assert value(sink, duration, handler="other", method="GET", code="404") == 1
    assert value(sink, "http_response_size_bytes_sum", handler="/v2/*", method="GET",
                 code="200") == 2  # "{}"
    assert value(sink, "http_requests_inflight", handler="/v2/*") == 0
    assert value(sink, "spegel_store_connected") == 1  # the node reported its store


async def test_metrics_and_debug_routes(app_and_sink: tuple[FastAPI, PrometheusSink]) -> None:
    app, sink = app_and_sink
    metrics_app = metrics_app_of(app)
    assert metrics_app is not None
    sink.emit(MirrorRequest("docker.io", "blob", Source.PEER, 200, 3 * 2**20, 0.05,
                            path="/v2/<script>alert(1)</script>/blobs/x"))
    sink.emit(BytesServed(Source.PEER, 3 * 2**20))
    transport = httpx.ASGITransport(app=metrics_app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=transport, base_url="http://m") as client:
        exposition = await client.get("/metrics")
        page = await client.get("/debug")
    assert exposition.headers["content-type"].startswith("text/plain")
    assert 'spegel_mirror_requests_total{cache="hit",registry="docker.io"} 1.0' \
        in exposition.text
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert '<span id="hit-ratio">100.0%</span>' in html
    assert '<span id="bytes-peer">3.0 MiB</span>' in html
    assert "No router" in html and "No peer is penalised" in html
    assert "http://" not in html.replace('href="/metrics"', "")  # no external assets


def test_plugins_json_lists_the_prometheus_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--json"]) == 0
    plugins = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert {"spegel_register_metrics", "spegel_add_routes"} <= set(
        plugins["prometheus"]["hooks"])


async def test_debug_page_lists_peer_and_content_penalties(
        spegel_pm: PluginManager, make_config: Callable[..., SpegelConfig],
        register_plugin: Callable[[object, str], None]) -> None:
    from spegel_core import hookimpl
    from spegel_core.errors import PeerNotFound, PeerTimeout
    from spegel_core.protocols import Peer
    from spegel_core.testing.fakes import MemoryNetwork, MemoryRouter

    class Wiring:
        @hookimpl
        def spegel_make_router(self, config: SpegelConfig, discovery: Any, metrics: Any) -> Any:
            return MemoryRouter(MemoryNetwork(), Peer("127.0.0.1", 1))

    register_plugin(Wiring(), "wiring")
    app = create_app(make_config(content_store="memory", router="memory"), spegel_pm,
                     store=MemoryContentStore())
    peers = app.state.node.peers
    digest = "sha256:" + "c" * 64
    peers.penalise(Peer("127.0.0.1", 7001), PeerTimeout("slow"), digest)
    peers.penalise(Peer("127.0.0.1", 7002), PeerNotFound("HTTP 404"), digest)
    metrics_app = metrics_app_of(app)
    assert metrics_app is not None
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=metrics_app), base_url="http://m") as client:
        html = (await client.get("/debug")).text
        exposition = (await client.get("/metrics")).text
    assert "<code>127.0.0.1:7001</code>" in html
    assert f"<code>127.0.0.1:7002 {digest}</code>" in html
    assert "spegel_penalised_peers 1.0" in exposition  # the gauge counts peer-wide ones
    assert 'spegel_peer_penalties_total{kind="connect",scope="peer"} 1.0' in exposition
    assert 'spegel_peer_penalties_total{kind="status",scope="content"} 1.0' in exposition


async def test_debug_page_shows_single_flight_claims_and_flights(
        spegel_pm: PluginManager, make_config: Callable[..., SpegelConfig],
        register_plugin: Callable[[object, str], None]) -> None:
    from spegel_core import hookimpl
    from spegel_core.errors import BlobUnknown
    from spegel_core.protocols import FlightClaim, Peer
    from spegel_core.testing.fakes import MemoryNetwork, MemoryRouter

    class Wiring:
        @hookimpl
        def spegel_make_router(self, config: SpegelConfig, discovery: Any, metrics: Any) -> Any:
            return MemoryRouter(MemoryNetwork(), Peer("127.0.0.1", 1))

    register_plugin(Wiring(), "wiring")
    app = create_app(make_config(content_store="memory", router="memory"), spegel_pm,
                     store=MemoryContentStore())
    flight = app.state.node.flight
    assert flight is not None
    digest = "sha256:" + "d" * 64
    with pytest.raises(BlobUnknown):
        await flight.fetch("docker.io", "x", digest, None, client="127.0.0.9")
    sink = sink_of(app.state.node.view())
    assert sink is not None
    sink.emit(FlightClaim("wait", 2, 0.001))
    metrics_app = metrics_app_of(app)
    assert metrics_app is not None
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=metrics_app), base_url="http://m") as client:
        html = (await client.get("/debug")).text
        exposition = (await client.get("/metrics")).text
    assert "<h2>Single flight</h2>" in html and f"<code>{digest[:19]}</code>" in html
    assert "upstream" in html and "Flights held here" in html
    assert 'spegel_single_flight_claims_total{role="go"} 1.0' in exposition
    assert 'spegel_single_flight_claims_total{role="wait"} 1.0' in exposition
