"""A plugin installed as a distribution with a ``spegel`` entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from spegel_core.errors import PluginError
from spegel_core.plugin_manager import create_plugin_manager

PLUGIN = textwrap.dedent('''
    from spegel_core import hookimpl
    from spegel_core.testing.fakes import MemoryContentStore

    STORE = MemoryContentStore(name="thirdparty")

    @hookimpl
    def spegel_make_content_store(config):
        # Not trylast: overrides the built-in store of the same name.
        if config.core.content_store == "oci-layout":
            return STORE
        return None
''')


def _install(site: Path, name: str, module_source: str, version: str = "1.2.3") -> None:
    """Lay out a distribution the way pip does: the module plus its .dist-info."""
    (site / f"{name}.py").write_text(module_source)
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[spegel]\n{name} = {name}\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    return site


def test_entry_point_plugin_is_loaded_and_replaces_the_store(site: Path, tmp_path: Path,
                                                             make_config: object) -> None:
    _install(site, "spegel_thirdparty", PLUGIN)
    pm = create_plugin_manager()
    info = {i.name: i for i in pm.plugin_infos()}["spegel_thirdparty"]
    assert (info.source, info.version) == ("spegel_thirdparty", "1.2.3")
    assert info.hooks == ["spegel_make_content_store"]
    from spegel_core.config import load_config

    config = load_config(pm.settings_registry(),
                         {"content_store": "oci-layout", "oci_layout_path": str(tmp_path)})
    assert pm.make_content_store(config).name == "thirdparty"
    # Disabled by name, the built-in store is back.
    pm = create_plugin_manager(disabled=["spegel_thirdparty"])
    assert pm.make_content_store(config).name == "oci-layout"


def test_broken_plugin_is_a_one_line_error_naming_it(site: Path) -> None:
    _install(site, "spegel_broken", "raise ImportError('missing dependency frobnicate')\n")
    with pytest.raises(PluginError) as info:
        create_plugin_manager()
    assert str(info.value).startswith('Error importing plugin "spegel_broken"')
    assert "frobnicate" in str(info.value)


def test_cli_lists_and_reports(site: Path) -> None:
    _install(site, "spegel_thirdparty", PLUGIN)
    env = {**os.environ, "PYTHONPATH": str(site)}
    listed = subprocess.run([sys.executable, "-m", "spegel_core.cli.main", "plugins", "--json"],
                            capture_output=True, text=True, env=env, timeout=60, check=True)
    names = [entry["name"] for entry in json.loads(listed.stdout)]
    assert names[0] == "oci-layout" and "spegel_thirdparty" in names
    _install(site, "spegel_broken", "raise RuntimeError('boom')\n")
    broken = subprocess.run([sys.executable, "-m", "spegel_core.cli.main", "plugins"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert broken.returncode == 2
    assert broken.stderr.strip() == (
        'spegel: error: Error importing plugin "spegel_broken": RuntimeError: boom')
    disabled = subprocess.run(
        [sys.executable, "-m", "spegel_core.cli.main", "--disable-plugin", "spegel_broken",
         "plugins", "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert disabled.returncode == 0, disabled.stderr


CLASHING = textwrap.dedent('''
    from spegel_core import hookimpl
    from spegel_core.testing.fakes import StaticListDiscovery

    @hookimpl
    def spegel_register_discovery(config, registry):
        if "dns" in config.core.bootstrap_kind:
            registry.add("dns", StaticListDiscovery(name="dns"))
''')


def test_a_built_in_bootstrap_kind_taken_again_is_one_line_and_exit_2(
        site: Path, tmp_path: Path) -> None:
    _install(site, "spegel_clash", CLASHING)
    env = {**os.environ, "PYTHONPATH": str(site)}
    args = [sys.executable, "-m", "spegel_core.cli.main", "registry",
            "--content-store", "oci-layout", "--oci-layout-path", str(tmp_path),
            "--bootstrap-kind", "dns", "--dns-bootstrap-domain", "spegel.example",
            "--registry-addr", "127.0.0.1:0", "--router-addr", "127.0.0.1:0"]
    clash = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
    assert clash.returncode == 2, clash.stderr
    assert "Traceback" not in clash.stderr
    lines = [line for line in clash.stderr.splitlines() if line.startswith("spegel: error")]
    assert len(lines) == 1, clash.stderr
    assert lines[0].startswith("spegel: error: bootstrap kind 'dns' is registered twice, by ")
    assert "spegel_dns.discovery.DNSDiscovery" in lines[0]
    assert "StaticListDiscovery" in lines[0] and "--disable-plugin" in lines[0]


def test_disabling_the_built_in_hands_its_kind_to_the_plugin(site: Path, tmp_path: Path) -> None:
    from spegel_core.config import load_config

    _install(site, "spegel_clash", CLASHING)
    pm = create_plugin_manager(disabled=["dns"])
    config = load_config(pm.settings_registry(), {
        "content_store": "oci-layout", "oci_layout_path": str(tmp_path),
        "bootstrap_kind": "dns", "router": "none"})
    [source] = pm.discoveries(config)
    assert type(source).__name__ == "StaticListDiscovery" and source.name == "dns"
