"""Settings, name checks and hooks of DNS discovery (no DNS traffic)."""

from __future__ import annotations

from typing import Any

import pytest

from spegel_core.config import Address, SpegelConfig, load_config
from spegel_core.errors import ConfigError
from spegel_core.hostnames import canonical_host, check_dns_name, parse_nameserver
from spegel_core.local_addresses import LocalAddresses
from spegel_core.plugin_manager import PluginManager, create_plugin_manager
from spegel_core.protocols import Discovery, PeerAddress
from spegel_core.testing.fakes import RecordingSink
from spegel_dns import DNSDiscovery, DNSSettings


@pytest.fixture
def manager() -> PluginManager:
    return create_plugin_manager(load_entrypoints=False)


def config_of(manager: PluginManager, **values: Any) -> SpegelConfig:
    values.setdefault("content_store", "memory")
    return load_config(manager.settings_registry(), values)


@pytest.mark.parametrize(("value", "expected"), [
    ("spegel-bootstrap.spegel.svc.cluster.local", "spegel-bootstrap.spegel.svc.cluster.local"),
    ("Spegel.Test.", "spegel.test"),
    ("localhost", "localhost"),
    ("_router._udp.spegel.svc", "_router._udp.spegel.svc"),
    ("a" * 63 + ".test", "a" * 63 + ".test"),
    ("1node.test", "1node.test"),
])
def test_good_names(value: str, expected: str) -> None:
    assert check_dns_name(value) == expected


@pytest.mark.parametrize("value", [
    "", ".", "a..b", "-a.test", "a-.test", "a b.test", "a/b", "a" * 64 + ".test",
    ("a" * 60 + ".") * 5, "10.0.0.1", "::1", "a.123", "exa mple", "näme.test",
])
def test_bad_names(value: str) -> None:
    with pytest.raises(ValueError):
        check_dns_name(value)


@pytest.mark.parametrize(("value", "expected"), [
    ("127.0.0.1", "127.0.0.1:53"),
    ("127.0.0.1:5353", "127.0.0.1:5353"),
    (" 10.96.0.10:53 ", "10.96.0.10:53"),
    ("::1", "[::1]:53"),
    ("[::1]", "[::1]:53"),
    ("[::1]:5353", "[::1]:5353"),
    ("fd00:0::10", "[fd00::10]:53"),
])
def test_good_nameservers(value: str, expected: str) -> None:
    assert parse_nameserver(value) == expected


@pytest.mark.parametrize("value", [
    "", "dns.example", "dns.example:53", "127.0.0.1:0", "127.0.0.1:70000", "127.0.0.1:x",
    "[::1", "[::1]5353", "[::1]:", "1.2.3.4.5", "[127.0.0.1]:53x",
])
def test_bad_nameservers(value: str) -> None:
    with pytest.raises(ValueError):
        parse_nameserver(value)


def test_canonical_host() -> None:
    assert canonical_host("::FFFF:127.0.0.2") == "127.0.0.2"
    assert canonical_host("[fd00:0::1]") == "fd00::1"
    assert canonical_host("Node.Test.") == "node.test"


def test_defaults(manager: PluginManager) -> None:
    settings = config_of(manager).get(DNSSettings)
    assert settings.dns_bootstrap_domain is None and settings.dns_nameservers == []
    assert (settings.dns_sample_size, settings.dns_timeout, settings.dns_refresh_interval) == (
        5, 2.0, 1800.0)
    assert settings.dns_port is None and settings.dns_srv_name is None


def test_settings_are_normalised(manager: PluginManager) -> None:
    settings = config_of(manager, dns_bootstrap_domain="Spegel.Test.",
                         dns_nameservers="127.0.0.1:5353,::1", dns_timeout="250ms",
                         dns_refresh_interval="5m", dns_srv_name="_router._udp.spegel.test",
                         dns_sample_size="7", dns_port="6001").get(DNSSettings)
    assert settings.dns_bootstrap_domain == "spegel.test"
    assert settings.dns_nameservers == ["127.0.0.1:5353", "[::1]:53"]
    assert (settings.dns_timeout, settings.dns_refresh_interval) == (0.25, 300.0)
    assert (settings.dns_sample_size, settings.dns_port) == (7, 6001)


@pytest.mark.parametrize(("flag", "value"), [
    ("dns_bootstrap_domain", "not a name"),
    ("dns_nameservers", "127.0.0.1:5353,dns.example"),
    ("dns_sample_size", "0"),
    ("dns_udp_pool", "-1"),
    ("dns_udp_pool", "many"),
    ("dns_udp_pool", "100000"),
    ("dns_timeout", "0s"),
    ("dns_timeout", "soon"),
    ("dns_port", "0"),
    ("dns_srv_name", "-x.test"),
])
def test_bad_settings_name_the_flag(manager: PluginManager, flag: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_of(manager, **{flag: value})
    assert info.value.flag.startswith("--" + flag.replace("_", "-"))


def test_domain_required_with_dns_kind(manager: PluginManager) -> None:
    with pytest.raises(ConfigError) as info:
        manager.configure(config_of(manager, bootstrap_kind="dns"))
    assert info.value.flag == "--dns-bootstrap-domain"


def test_registered_as_builtin(manager: PluginManager) -> None:
    infos = {info.name: info for info in manager.plugin_infos()}
    assert "dns" in infos and "spegel_register_discovery" in infos["dns"].hooks


def test_register_discovery(manager: PluginManager) -> None:
    config = config_of(manager, bootstrap_kind="dns", dns_bootstrap_domain="spegel.test",
                       dns_nameservers="127.0.0.1:5353", router_addr="127.0.0.2:7001",
                       dns_refresh_interval="10m", dns_srv_name="_r._udp.spegel.test")
    manager.configure(config)
    sink = RecordingSink()
    [discovery] = manager.discoveries(config, sink)
    assert isinstance(discovery, DNSDiscovery) and isinstance(discovery, Discovery)
    assert discovery.name == "dns" and discovery.refresh_interval == 600
    assert discovery.port == 7001  # the router's port by default
    assert discovery.udp_pool == 16
    assert discovery.nameservers == ["127.0.0.1:5353"]
    assert discovery.srv_name == "_r._udp.spegel.test" and discovery.metrics is sink
    assert discovery.own.given == ("127.0.0.2",) and discovery.own.port is None
    config = config_of(manager, bootstrap_kind="dns", dns_bootstrap_domain="spegel.test",
                       dns_port="6001", dns_udp_pool="0")
    [discovery] = manager.discoveries(config)
    assert isinstance(discovery, DNSDiscovery)
    assert discovery.udp_pool == 0
    assert discovery.port == 6001 and discovery.own.include_hostname


def test_not_registered_unless_selected(manager: PluginManager) -> None:
    config = config_of(manager, dns_bootstrap_domain="spegel.test")
    manager.configure(config)
    assert manager.discoveries(config) == []


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        DNSDiscovery("spegel.test", port=5001, sample_size=0)
    with pytest.raises(ValueError, match="udp_pool"):
        DNSDiscovery("spegel.test", port=5001, udp_pool=-1)
    with pytest.raises(ValueError):
        DNSDiscovery("spegel.test", port=5001, timeout=0)
    with pytest.raises(ValueError):
        DNSDiscovery("10.0.0.1", port=5001)
    with pytest.raises(ValueError):
        DNSDiscovery("spegel.test", port=5001, nameservers=["dns.example"])


async def test_local_addresses() -> None:
    own = LocalAddresses(["127.0.0.2", "::ffff:127.0.0.3", "0.0.0.0"])
    assert await own.load() == {"127.0.0.2", "127.0.0.3"}
    assert own.is_own(PeerAddress("127.0.0.2", 1)) and own.is_own(PeerAddress("127.0.0.3", 2))
    assert not own.is_own(PeerAddress("127.0.0.4", 1))
    pinned = LocalAddresses.for_router(Address("127.0.0.2", 5001), match_port=True)
    assert await pinned.drop_own([PeerAddress("127.0.0.2", 5001), PeerAddress("127.0.0.2", 5002),
                                  PeerAddress("127.0.0.2", 5002)]) == [
        PeerAddress("127.0.0.2", 5002)]
    assert "127.0.0.2" in repr(pinned)
    wildcard = LocalAddresses.for_router(Address("", 5001), match_port=False)
    assert wildcard.include_hostname and wildcard.given == ()
