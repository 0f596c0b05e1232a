"""The plugin hooks and the settings model."""

from __future__ import annotations

from pathlib import Path

import pytest

from spegel_core.config import SettingsRegistry, load_config
from spegel_core.errors import ConfigError
from spegel_core.registries import MetricsHub
from spegel_kademlia import KademliaRouter, KademliaSettings
from spegel_kademlia.ids import NODE_ID_FILE
from spegel_kademlia.plugin import spegel_add_settings, spegel_make_router


def registry() -> SettingsRegistry:
    reg = SettingsRegistry()
    spegel_add_settings(reg)
    return reg


def test_defaults_are_the_field_values() -> None:
    config = load_config(registry(), {})
    s = config.get(KademliaSettings)
    assert (s.kademlia_k, s.kademlia_alpha, s.kademlia_lookup_count) == (20, 3, 3)
    assert (s.kademlia_rpc_timeout, s.kademlia_hedge_after) == (0.15, 0.05)
    assert (s.kademlia_provider_ttl, s.kademlia_reprovide_interval,
            s.kademlia_reprovide_jitter) == (1140, 900, 120)
    assert s.kademlia_reprovide_concurrency == 8 and s.kademlia_bootstrap_backoff_max == 30


def test_durations_parse_and_reprovide_must_beat_expiry() -> None:
    config = load_config(registry(), {"kademlia_rpc_timeout": "200ms",
                                      "kademlia_provider_ttl": "30m"})
    assert config.get(KademliaSettings).kademlia_rpc_timeout == pytest.approx(0.2)
    with pytest.raises(ConfigError) as info:
        load_config(registry(), {"kademlia_reprovide_interval": "18m"})
    assert "--kademlia-reprovide-jitter" in str(info.value)


def test_make_router_only_for_kademlia(tmp_path: Path) -> None:
    other = load_config(registry(), {"router": "memory"})
    assert spegel_make_router(other, [], MetricsHub()) is None
    config = load_config(registry(), {"router": "kademlia", "router_addr": ":7001",
                                      "registry_addr": "127.0.0.1:7000",
                                      "data_dir": str(tmp_path)})
    router = spegel_make_router(config, [], MetricsHub())
    assert isinstance(router, KademliaRouter)
    assert router.name == "kademlia" and router.mirror_port == 7000
    assert router.address == ":7001"  # every address of both families, once started
    assert (tmp_path / NODE_ID_FILE).read_text().strip() == router.node_id.hex()
    again = spegel_make_router(config, [], MetricsHub())
    assert isinstance(again, KademliaRouter) and again.node_id == router.node_id
    assert "state=new" in repr(router)
