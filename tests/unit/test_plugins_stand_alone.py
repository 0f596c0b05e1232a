"""Each built-in plugin imports the core, never another plugin (checked in a fresh process)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = sorted(p.name for p in (ROOT / "plugins").iterdir()
                 if (p / "__init__.py").exists())


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_plugin_imports_no_other_plugin(plugin: str) -> None:
    others = {name for name in PLUGINS if name != plugin}
    for path in (ROOT / "plugins" / plugin).rglob("*.py"):
        if path.name in ("names.py", "local.py") and plugin == "spegel_dns":
            continue  # re-exports of the core helpers for earlier imports
        bad = {name for name in _imported_modules(path) if name.split(".")[0] in others}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_plugin_does_not_use_the_test_kit_or_the_image_builder(plugin: str) -> None:
    for path in (ROOT / "plugins" / plugin).rglob("*.py"):
        bad = {name for name in _imported_modules(path)
               if name.startswith(("spegel_core.testing", "spegel_core.oci.image_builder"))}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_cli_demo_does_not_use_the_test_kit() -> None:
    demo = ROOT / "spegel_core" / "cli" / "demo.py"
    assert not {name for name in _imported_modules(demo)
                if name.startswith("spegel_core.testing")}


CHECK = textwrap.dedent('''
    import asyncio, json, sys
    from spegel_core.config import load_config
    from spegel_core.plugin_manager import create_plugin_manager

    pm = create_plugin_manager(load_entrypoints=False, disabled=["dns"])
    config = load_config(pm.settings_registry(), {
        "content_store": "oci-layout", "oci_layout_path": sys.argv[1], "router": "none",
        "bootstrap_kind": "static", "static_peers": "/ip4/127.0.0.9/udp/5001",
        "router_addr": "127.0.0.8:5001"})
    pm.configure(config)
    [source] = pm.discoveries(config)

    async def main():
        try:
            return [str(peer) for peer in await source.bootstrap_peers()]
        finally:
            await source.aclose()

    peers = asyncio.run(main())
    print(json.dumps({"peers": peers, "plugins": [i.name for i in pm.plugin_infos()],
                      "loaded": sorted(m for m in sys.modules
                                       if m.split(".")[0] in ("aiodns", "pycares", "spegel_dns"))}))
''')


def test_disable_plugin_dns_loads_neither_aiodns_nor_spegel_dns(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path)], capture_output=True,
                          text=True, timeout=60, check=True, cwd=tmp_path)
    result = json.loads(done.stdout)
    assert result["peers"] == ["127.0.0.9:5001"]  # static bootstrap of an IP worked
    assert "dns" not in result["plugins"] and "static" in result["plugins"]
    assert result["loaded"] == []
