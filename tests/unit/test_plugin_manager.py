from __future__ import annotations

from pathlib import Path

import pytest

from spegel_core import hookimpl
from spegel_core.config import SpegelConfig
from spegel_core.errors import ConfigError, PluginError
from spegel_core.plugin_manager import PluginManager, create_plugin_manager
from spegel_core.testing.fakes import MemoryContentStore, StaticListDiscovery
from spegel_core.testing.plugin import HookRecorder


def test_builtins_are_registered_first(spegel_pm: PluginManager) -> None:
    names = [info.name for info in spegel_pm.plugin_infos()]
    assert names[0] == "oci-layout"
    info = spegel_pm.plugin_infos()[0]
    assert info.source == "builtin"
    assert "spegel_make_content_store" in info.hooks


def test_disable_plugin() -> None:
    pm = create_plugin_manager(load_entrypoints=False, disabled=["oci-layout"])
    assert "oci-layout" not in [info.name for info in pm.plugin_infos()]


def test_unknown_store_names_the_flag(spegel_pm: PluginManager, make_config: object) -> None:
    config = make_config(content_store="nope")  # type: ignore[operator]
    with pytest.raises(ConfigError) as info:
        spegel_pm.make_content_store(config)
    assert str(info.value).startswith("--content-store")
    assert "'nope'" in str(info.value)


def test_unknown_bootstrap_kind_and_router(spegel_pm: PluginManager, make_config: object) -> None:
    config = make_config(bootstrap_kind="carrier-pigeon")  # type: ignore[operator]
    with pytest.raises(ConfigError, match="--bootstrap-kind"):
        spegel_pm.discoveries(config)
    config = make_config(router="smoke-signals")  # type: ignore[operator]
    from spegel_core.registries import MetricsHub

    with pytest.raises(ConfigError, match="--router"):
        spegel_pm.make_router(config, [], MetricsHub())


def test_plugin_overrides_builtin_store(spegel_pm: PluginManager, register_plugin: object,
                                        make_config: object, tmp_path: Path) -> None:
    store = MemoryContentStore(name="override")

    class Override:
        @hookimpl
        def spegel_make_content_store(self, config: SpegelConfig) -> MemoryContentStore | None:
            return store if config.core.content_store == "oci-layout" else None

    register_plugin(Override(), "override")  # type: ignore[operator]
    config = make_config(content_store="oci-layout", oci_layout_path=str(tmp_path))  # type: ignore[operator]
    assert spegel_pm.make_content_store(config) is store


def test_register_plugin_fixture_unregisters(spegel_pm: PluginManager) -> None:
    # A fresh manager per test: nothing from the previous test remains.
    assert "override" not in [info.name for info in spegel_pm.plugin_infos()]


def test_discovery_registry(spegel_pm: PluginManager, register_plugin: object,
                            make_config: object) -> None:
    source = StaticListDiscovery()

    class Source:
        @hookimpl
        def spegel_register_discovery(self, config: SpegelConfig, registry: object) -> None:
            if "list" in config.core.bootstrap_kind:
                registry.add("list", source)  # type: ignore[attr-defined]

    register_plugin(Source(), "list-source")  # type: ignore[operator]
    assert spegel_pm.discoveries(make_config(bootstrap_kind="list")) == [source]  # type: ignore[operator]
    assert spegel_pm.discoveries(make_config()) == []  # type: ignore[operator]


def test_hook_recorder_sees_start_up_hooks(spegel_pm: PluginManager, hook_recorder: HookRecorder,
                                           make_config: object, tmp_path: Path) -> None:
    from spegel_core.node import Node

    config = make_config(content_store="oci-layout", oci_layout_path=str(tmp_path))  # type: ignore[operator]
    Node.build(config, spegel_pm)
    names = hook_recorder.names()
    assert names.index("spegel_configure") < names.index("spegel_make_content_store")
    assert "spegel_register_metrics" in names and "spegel_register_discovery" in names


def test_unconfigure_runs_at_shutdown(spegel_pm: PluginManager, hook_recorder: HookRecorder,
                                      make_config: object) -> None:
    import asyncio
    from contextlib import AsyncExitStack

    from spegel_core.node import Node

    async def lifecycle() -> None:
        node = Node.build(make_config(content_store="memory"), spegel_pm,  # type: ignore[operator]
                          store=MemoryContentStore())
        async with AsyncExitStack() as stack:
            await node.open(stack)
            assert node.started

    asyncio.run(lifecycle())
    assert hook_recorder.names()[-1] == "spegel_unconfigure"


def test_invalid_hookimpl_is_a_plugin_error(spegel_pm: PluginManager) -> None:
    class Bad:
        @hookimpl
        def spegel_make_content_store(self, wrong_argument: object) -> None:
            return None

    with pytest.raises(PluginError, match='"bad"'):
        spegel_pm.register(Bad(), "bad")
