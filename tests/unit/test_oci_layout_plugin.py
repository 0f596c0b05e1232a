"""Hooks of the built-in ``oci-layout`` plugin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from spegel_core.config import SpegelConfig, load_config
from spegel_core.errors import ConfigError
from spegel_core.plugin_manager import PluginManager, create_plugin_manager
from spegel_core.testing.fakes import RecordingSink
from spegel_oci_layout.plugin import OCILayoutSettings
from spegel_oci_layout.store import OCILayoutStore


@pytest.fixture
def manager() -> PluginManager:
    return create_plugin_manager(load_entrypoints=False)


def config_of(manager: PluginManager, **values: Any) -> SpegelConfig:
    return load_config(manager.settings_registry(), values)


def test_settings_registered(manager: PluginManager) -> None:
    registry = manager.settings_registry()
    assert OCILayoutSettings in registry.models
    config = config_of(manager, oci_layout_path="/x", oci_layout_poll_interval="250ms")
    settings = config.get(OCILayoutSettings)
    assert settings.oci_layout_path == Path("/x")
    assert settings.oci_layout_poll_interval == 0.25
    assert config_of(manager).get(OCILayoutSettings).oci_layout_poll_interval == 1.0


def test_poll_interval_must_be_positive(manager: PluginManager) -> None:
    with pytest.raises(ConfigError, match="--oci-layout-poll-interval"):
        config_of(manager, oci_layout_poll_interval="0s")


def test_make_store(manager: PluginManager, tmp_path: Path) -> None:
    config = config_of(manager, content_store="oci-layout", oci_layout_path=str(tmp_path),
                       oci_layout_poll_interval="2s")
    manager.configure(config)
    store = manager.make_content_store(config)
    assert isinstance(store, OCILayoutStore)
    assert store.root == tmp_path and store.poll_interval == 2.0


def test_other_store_names_return_none(manager: PluginManager) -> None:
    config = config_of(manager, content_store="no-such-store")
    manager.configure(config)  # nothing to check for another store
    hook = manager.pluggy.hook.spegel_make_content_store
    assert hook(config=config, metrics=RecordingSink()) is None


def test_missing_path(manager: PluginManager) -> None:
    config = config_of(manager, content_store="oci-layout")
    with pytest.raises(ConfigError) as info:
        manager.configure(config)
    assert info.value.flag == "--oci-layout-path"
    with pytest.raises(ConfigError, match="--oci-layout-path"):
        manager.make_content_store(config)


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_text("x"), "not a directory"),
    (lambda p: (p.mkdir(), (p / "index.json").write_text("{nope")), "not readable JSON"),
    (lambda p: (p.mkdir(), (p / "index.json").write_text("[]")), "not an OCI image index"),
])
def test_configure_checks_the_directory(manager: PluginManager, tmp_path: Path,
                                        setup: Any, message: str) -> None:
    path = tmp_path / "layout"
    setup(path)
    config = config_of(manager, content_store="oci-layout", oci_layout_path=str(path))
    with pytest.raises(ConfigError, match=message) as info:
        manager.configure(config)
    assert info.value.flag == "--oci-layout-path"


def test_directory_without_index_json_is_fine(manager: PluginManager, tmp_path: Path) -> None:
    config = config_of(manager, content_store="oci-layout", oci_layout_path=str(tmp_path))
    manager.configure(config)
