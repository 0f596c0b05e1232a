"""Metrics flow through ``spegel_register_metrics``: a third-party sink and the Prometheus
plugin see the same events after a fetch from a real peer process."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from spegel_core import hookimpl
from spegel_core.config import SpegelConfig
from spegel_core.mirror.app import create_app
from spegel_core.oci.image_builder import BuiltImage, build_image
from spegel_core.oci.reference import Reference
from spegel_core.plugin_manager import PluginManager
from spegel_core.protocols import (
    AdvertisedKeys,
    BytesServed,
    MirrorRequest,
    Peer,
    ResolveDuration,
    Source,
    StoreConnection,
    tag_key,
)
from spegel_core.registries import MetricsRegistry
from spegel_core.testing.fakes import MemoryContentStore, MemoryNetwork, MemoryRouter, RecordingSink
from spegel_core.testing.nodes import NodeProcess
from spegel_prometheus import PrometheusSink
from spegel_prometheus.plugin import sink_of

REF = "docker.io/library/demo:v1"


def value(sink: PrometheusSink, name: str, **labels: str) -> float | None:
    return sink.registry.get_sample_value(name, labels)


@pytest.fixture
def image(tmp_path: Path) -> BuiltImage:
    return build_image(tmp_path / "layout", REF, layer_sizes=(300_000, 5000))


class ThirdPartySink:
    """What an OpenTelemetry or StatsD plugin would be: a plugin object with the hook."""

    def __init__(self, network: MemoryNetwork) -> None:
        self.network = network
        self.sink = RecordingSink()

    @hookimpl
    def spegel_register_metrics(self, config: SpegelConfig, registry: MetricsRegistry) -> None:
        registry.add(self.sink)

    @hookimpl
    def spegel_make_router(self, config: SpegelConfig, discovery: Any, metrics: Any) -> Any:
        return MemoryRouter(self.network, Peer("127.0.0.1", 1))


async def test_a_recording_sink_and_prometheus_see_the_same_fetch(
        spegel_pm: PluginManager, make_config: Callable[..., SpegelConfig],
        register_plugin: Callable[[object, str], None],
        spegel_node: Callable[..., NodeProcess], image: BuiltImage) -> None:
    provider = spegel_node("--content-store", "oci-layout", "--oci-layout-path",
                           str(image.layout_dir), "--router", "none")
    network = MemoryNetwork()
    peer = Peer(provider.ip, provider.port)
    network.add_provider(tag_key(Reference.parse(REF)), peer)
    for digest in image.blobs:
        network.add_provider(digest, peer)
    third = ThirdPartySink(network)
    register_plugin(third, "third-party")
    config = make_config(content_store="memory", router="memory",
                         mirror_resolve_timeout="200ms")
    app = create_app(config, spegel_pm, store=MemoryContentStore())
    prometheus = sink_of(app.state.node.view())
    assert prometheus is not None
    layer = image.layer_digests[0]
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://mirror") as client:
        manifest = await client.get("/v2/library/demo/manifests/v1")
        blob = await client.get(f"/v2/library/demo/blobs/{layer}")
        missing = await client.get(f"/v2/library/demo/blobs/sha256:{'1' * 64}")
    assert manifest.headers["x-spegel-source"] == blob.headers["x-spegel-source"] == "peer"
    assert missing.status_code == 404

    events = third.sink
    requests = events.of_type(MirrorRequest)
    cache = Counter("hit" if e.source is Source.PEER else "miss" for e in requests
                    if e.source is not Source.LOCAL)
    assert cache == {"hit": 2, "miss": 1}
    assert value(prometheus, "spegel_mirror_requests_total", registry="docker.io",
                 cache="hit") == cache["hit"]
    assert value(prometheus, "spegel_mirror_requests_total", registry="docker.io",
                 cache="miss") == cache["miss"]
    peer_bytes = sum(e.bytes for e in events.of_type(BytesServed) if e.source is Source.PEER)
    assert peer_bytes == len(manifest.content) + len(blob.content)
    assert value(prometheus, "spegel_mirror_bytes_total", source="peer") == peer_bytes
    found = [e for e in events.of_type(ResolveDuration) if e.found]
    assert found and value(prometheus, "spegel_resolve_duration_seconds_count",
                           router="memory") == len(found)
    assert events.of_type(StoreConnection) == [StoreConnection(True)]
    assert value(prometheus, "spegel_store_connected") == 1
    content = [e for e in events.of_type(AdvertisedKeys) if e.kind == "content"]
    assert content and value(prometheus, "spegel_advertised_content_digests",
                             registry="") == content[-1].count
    assert [e.path for e in requests] == [
        seen.request.path for seen in reversed(list(prometheus.recent.newest_first()))]
