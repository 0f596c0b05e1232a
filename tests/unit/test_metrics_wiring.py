"""What a store or discovery source emits to is a hook argument, not an injected attribute."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from spegel_core import hookimpl
from spegel_core.config import SpegelConfig
from spegel_core.node import Node
from spegel_core.plugin_manager import PluginManager
from spegel_core.protocols import DnsQuery, MetricsSink, PeerAddress, StoreConnection
from spegel_core.registries import DiscoveryRegistry, MetricsRegistry
from spegel_core.testing.fakes import MemoryContentStore, RecordingSink, StaticListDiscovery


class ThirdParty:
    """A plugin with a store and a source that report to the ``metrics`` they are given."""

    def __init__(self) -> None:
        self.sink = RecordingSink()
        self.given: dict[str, MetricsSink] = {}

    @hookimpl
    def spegel_register_metrics(self, registry: MetricsRegistry) -> None:
        registry.add(self.sink)

    @hookimpl
    def spegel_make_content_store(self, config: SpegelConfig,
                                  metrics: MetricsSink) -> MemoryContentStore | None:
        if config.core.content_store != "third":
            return None
        self.given["store"] = metrics
        return MemoryContentStore(name="third")

    @hookimpl
    def spegel_register_discovery(self, config: SpegelConfig, registry: DiscoveryRegistry,
                                  metrics: MetricsSink) -> None:
        if "third" in config.core.bootstrap_kind:
            self.given["discovery"] = metrics
            registry.add("third", StaticListDiscovery([PeerAddress("127.0.0.2", 5001)],
                                                      name="third"))


class OldStyle:
    """Implementations may leave ``metrics`` out (pluggy passes a subset)."""

    @hookimpl
    def spegel_make_content_store(self, config: SpegelConfig) -> MemoryContentStore | None:
        return MemoryContentStore(name="old") if config.core.content_store == "old" else None

    @hookimpl
    def spegel_register_discovery(self, config: SpegelConfig,
                                  registry: DiscoveryRegistry) -> None:
        if "old" in config.core.bootstrap_kind:
            registry.add("old", StaticListDiscovery(name="old"))


def test_the_store_and_sources_get_the_nodes_metrics(
        spegel_pm: PluginManager, register_plugin: Callable[[Any, str], None],
        make_config: Callable[..., SpegelConfig]) -> None:
    plugin = ThirdParty()
    register_plugin(plugin, "third")
    node = Node.build(make_config(content_store="third", bootstrap_kind="third"), spegel_pm)
    assert node.store.name == "third" and [d.name for d in node.discovery] == ["third"]
    assert plugin.given == {"store": node.metrics, "discovery": node.metrics}
    plugin.given["store"].emit(StoreConnection(False))
    plugin.given["discovery"].emit(DnsQuery(0.001, "ok"))
    assert plugin.sink.events == [StoreConnection(False), DnsQuery(0.001, "ok")]


def test_implementations_without_metrics_still_work(
        spegel_pm: PluginManager, register_plugin: Callable[[Any, str], None],
        make_config: Callable[..., SpegelConfig]) -> None:
    register_plugin(OldStyle(), "old")
    node = Node.build(make_config(content_store="old", bootstrap_kind="old"), spegel_pm)
    assert node.store.name == "old" and [d.name for d in node.discovery] == ["old"]


def test_nothing_is_injected_into_an_object_with_a_metrics_attribute(
        spegel_pm: PluginManager, make_config: Callable[..., SpegelConfig]) -> None:
    store = MemoryContentStore()
    store.metrics = None  # type: ignore[attr-defined]
    Node.build(make_config(content_store="memory"), spegel_pm, store=store)
    assert store.metrics is None  # type: ignore[attr-defined]


def test_built_in_providers_take_the_metrics_argument(spegel_pm: PluginManager) -> None:
    for hook in ("spegel_make_content_store", "spegel_register_discovery"):
        for impl in getattr(spegel_pm.pluggy.hook, hook).get_hookimpls():
            assert "metrics" in impl.argnames, f"{impl.plugin_name}.{hook} ignores metrics"
