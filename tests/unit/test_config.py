from __future__ import annotations

import pytest

from spegel_core.config import Address, CoreSettings, SettingsRegistry, load_config, parse_duration
from spegel_core.errors import ConfigError


@pytest.mark.parametrize("text, seconds", [("20ms", 0.02), ("3s", 3.0), ("15m", 900.0),
                                           ("1.5", 1.5), (2, 2.0), ("1h", 3600.0)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["-1", "ten", "5 days", "", "1.2.3s", True])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("text, host, port", [(":5000", "", 5000),
                                              ("127.0.0.2:5000", "127.0.0.2", 5000),
                                              ("[::1]:80", "::1", 80)])
def test_addresses(text: str, host: str, port: int) -> None:
    address = Address.parse(text)
    assert (address.host, address.port) == (host, port)


@pytest.mark.parametrize("text", ["5000", "host:", "host:99999", "a b:1", ":x"])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        Address.parse(text)


def test_defaults_follow_spegel() -> None:
    config = load_config(SettingsRegistry(), {})
    assert config.core.registry_addr == Address("", 5000)
    assert config.core.router_addr == Address("", 5001)
    assert config.core.mirror_resolve_timeout == pytest.approx(0.02)
    assert config.core.mirror_resolve_retries == 3


def test_environment_is_read_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEGEL_MIRROR_RESOLVE_TIMEOUT", "50ms")
    monkeypatch.setenv("SPEGEL_MIRRORED_REGISTRIES", "https://registry-1.docker.io,ghcr.io")
    monkeypatch.setenv("SPEGEL_REGISTRY_ADDR", "127.0.0.5:5000")
    config = load_config(SettingsRegistry(), {"registry_addr": "127.0.0.6:5000"})
    assert config.core.mirror_resolve_timeout == pytest.approx(0.05)
    assert config.core.mirrored_registries == ["docker.io", "ghcr.io"]
    assert config.core.registry_addr.host == "127.0.0.6"


@pytest.mark.parametrize("values, flag", [
    ({"registry_addr": "nonsense"}, "--registry-addr"),
    ({"mirror_resolve_timeout": "-5s"}, "--mirror-resolve-timeout"),
    ({"mirror_resolve_retries": "-1"}, "--mirror-resolve-retries"),
    ({"registry_filters": "(unclosed"}, "--registry-filters"),
    ({"mirrored_registries": "ftp://x"}, "--mirrored-registries"),
    ({"log_level": "LOUD"}, "--log-level"),
    ({"peer_blob_verify": "sometimes"}, "--peer-blob-verify"),
    ({"peer_blob_verify": ""}, "--peer-blob-verify"),
    ({"peer_fanout": "0"}, "--peer-fanout"),
    ({"peer_fanout": "many"}, "--peer-fanout"),
    ({"single_flight_wait": "0s"}, "--single-flight-wait"),
    ({"single_flight_wait": "31s"}, "--single-flight-wait"),
    ({"single_flight": "perhaps"}, "--single-flight"),
    ({"advertise_arriving": "perhaps"}, "--advertise-arriving"),
])
def test_errors_name_the_flag(values: dict[str, object], flag: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(SettingsRegistry(), values)
    assert str(info.value).startswith(flag)
    assert "\n" not in str(info.value)


def test_config_is_frozen() -> None:
    config = load_config(SettingsRegistry(), {})
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError
        config.core.content_store = "x"  # type: ignore[misc]


def test_duplicate_setting_is_refused() -> None:
    from spegel_core.config import SpegelSettings
    from spegel_core.errors import PluginError

    class Clash(SpegelSettings):
        registry_addr: str = ""

    with pytest.raises(PluginError, match="--registry-addr"):
        SettingsRegistry().add(Clash, owner="clash")
    assert CoreSettings in SettingsRegistry().models
