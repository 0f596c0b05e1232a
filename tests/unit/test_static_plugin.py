"""Hooks, settings and behaviour of static discovery (IP peers: no DNS involved)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from spegel_core.config import SpegelConfig, load_config
from spegel_core.errors import ConfigError
from spegel_core.local_addresses import LocalAddresses
from spegel_core.plugin_manager import PluginManager, create_plugin_manager
from spegel_core.protocols import Discovery, PeerAddress
from spegel_static import StaticDiscovery, StaticSettings
from spegel_static.plugin import make_discovery


@pytest.fixture
def manager() -> PluginManager:
    return create_plugin_manager(load_entrypoints=False)


def config_of(manager: PluginManager, **values: Any) -> SpegelConfig:
    values.setdefault("content_store", "memory")  # no other plugin's checks in the way
    return load_config(manager.settings_registry(), values)


def test_registered_as_builtin(manager: PluginManager) -> None:
    infos = {info.name: info for info in manager.plugin_infos()}
    assert "static" in infos and infos["static"].source == "builtin"
    assert {"spegel_add_settings", "spegel_configure",
            "spegel_register_discovery"} <= set(infos["static"].hooks)


def test_settings(manager: PluginManager) -> None:
    config = config_of(manager, static_peers="/ip4/127.0.0.2/udp/5001, /ip6/::1/udp/5001",
                       static_refresh_interval="5m")
    settings = config.get(StaticSettings)
    assert settings.static_peers == ["/ip4/127.0.0.2/udp/5001", "/ip6/::1/udp/5001"]
    assert settings.static_refresh_interval == 300
    assert config_of(manager).get(StaticSettings).static_peers == []


def test_settings_from_environment(manager: PluginManager,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEGEL_STATIC_PEERS", "/ip4/127.0.0.3/udp/5001,/dns4/a.test")
    assert len(config_of(manager).get(StaticSettings).static_peers) == 2


def test_register_discovery(manager: PluginManager) -> None:
    config = config_of(manager, bootstrap_kind="static", router_addr="127.0.0.9:7001",
                       static_peers="/ip4/127.0.0.2/udp/5001,/ip4/127.0.0.3,/dns4/a.test")
    manager.configure(config)
    [discovery] = manager.discoveries(config)
    assert isinstance(discovery, StaticDiscovery) and isinstance(discovery, Discovery)
    assert discovery.name == "static" and discovery.refresh_interval == 1800
    assert [str(peer) for peer in discovery.peers] == [
        "/ip4/127.0.0.2/udp/5001", "/ip4/127.0.0.3/udp/7001", "/dns4/a.test/udp/7001"]


def test_not_registered_unless_selected(manager: PluginManager) -> None:
    config = config_of(manager, bootstrap_kind="", static_peers="/ip4/127.0.0.2/udp/5001")
    assert manager.discoveries(config) == []


def test_peers_required_when_selected(manager: PluginManager) -> None:
    config = config_of(manager, bootstrap_kind="static")
    with pytest.raises(ConfigError) as info:
        manager.configure(config)
    assert info.value.flag == "--static-peers" and "required" in info.value.message


@pytest.mark.parametrize("bad", ["/ip4/1.2.3.4/tcp/5001", "garbage", "/ip4/300.1.1.1/udp/1",
                                 "/ip4/1.2.3.4/udp/5001/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"])
def test_bad_multiaddr_is_a_one_line_config_error(manager: PluginManager, bad: str) -> None:
    config = config_of(manager, bootstrap_kind="static",
                       static_peers=f"/ip4/127.0.0.2/udp/5001,{bad}")
    with pytest.raises(ConfigError) as info:
        manager.configure(config)
    assert info.value.flag == "--static-peers"
    assert "\n" not in str(info.value) and bad[:20] in str(info.value)


def test_unused_peers_are_only_warned_about(manager: PluginManager,
                                            caplog: pytest.LogCaptureFixture) -> None:
    config = config_of(manager, static_peers="garbage")
    with caplog.at_level(logging.WARNING):
        manager.configure(config)
    assert "ignored without --bootstrap-kind static" in caplog.text


def test_combined_with_another_kind(manager: PluginManager) -> None:
    config = config_of(manager, bootstrap_kind="static,dns",
                       dns_bootstrap_domain="spegel.test", dns_nameservers="127.0.0.1:1",
                       static_peers="/ip4/127.0.0.2/udp/5001")
    manager.configure(config)
    assert sorted(source.name for source in manager.discoveries(config)) == ["dns", "static"]


async def test_ip_peers_in_order_without_duplicates() -> None:
    discovery = StaticDiscovery(["/ip4/127.0.0.3/udp/5001", "/ip6/::1/udp/5002",
                                 "/ip4/127.0.0.2", "/ip4/127.0.0.3/udp/5001"], default_port=5001)
    assert await discovery.bootstrap_peers() == [
        PeerAddress("127.0.0.3", 5001), PeerAddress("::1", 5002), PeerAddress("127.0.0.2", 5001)]
    assert discovery.calls == 1 and "127.0.0.3" in repr(discovery)


async def test_own_address_dropped_by_host_and_port(manager: PluginManager) -> None:
    config = config_of(manager, bootstrap_kind="static", router_addr="127.0.0.2:5001",
                       static_peers="/ip4/127.0.0.2/udp/5001,/ip4/127.0.0.2/udp/5002,"
                                    "/ip4/127.0.0.3/udp/5001,/ip6/::ffff:127.0.0.2/udp/5001")
    discovery = make_discovery(config)
    assert await discovery.bootstrap_peers() == [
        PeerAddress("127.0.0.2", 5002), PeerAddress("127.0.0.3", 5001)]


async def test_wildcard_router_drops_the_hostname_addresses(monkeypatch: pytest.MonkeyPatch,
                                                            manager: PluginManager) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "127.0.0.4")  # an IP: no look-up at all
    config = config_of(manager, bootstrap_kind="static", router_addr=":5001",
                       static_peers="/ip4/127.0.0.4/udp/5001,/ip4/127.0.0.5/udp/5001")
    discovery = make_discovery(config)
    assert await discovery.bootstrap_peers() == [PeerAddress("127.0.0.5", 5001)]


async def test_closed_discovery_returns_nothing() -> None:
    discovery = StaticDiscovery(["/ip4/127.0.0.3/udp/5001"],
                                own=LocalAddresses(["127.0.0.9"], port=5001))
    await discovery.aclose()
    await discovery.aclose()
    assert await discovery.bootstrap_peers() == []
    assert "closed" in repr(discovery)
