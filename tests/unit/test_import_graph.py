"""Import arrows run one way: plugins -> core; inside the core, edges -> middle; no circles.

Plugins stand alone (no plugin imports another) and the test kit is used by tests only.

Every import counts: module level, ``if TYPE_CHECKING:`` and inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Circles still to break (owned elsewhere); an entry here only tolerates, never requires.
KNOWN_CIRCLES: list[set[str]] = []
#: The middle of the core: types, vocabulary and helpers that every edge may use.
MIDDLE = ("spegel_core.protocols", "spegel_core.view", "spegel_core.errors", "spegel_core.oci",
          "spegel_core.config", "spegel_core.registries", "spegel_core.hookspecs",
          "spegel_core.store_events", "spegel_core.store_kit", "spegel_core.hostnames",
          "spegel_core.local_addresses", "spegel_core.peer_filter",
          "spegel_core.registry_urls")
#: The edges (and the wiring that assembles them): the middle never imports these.
EDGES = ("spegel_core.mirror", "spegel_core.server", "spegel_core.cli", "spegel_core.node",
         "spegel_core.plugin_manager", "spegel_core.testing", "spegel_core.localcluster")
#: The built-in plugins' top-level packages.
PLUGINS = tuple(sorted(p.name for p in (ROOT / "plugins").iterdir()
                       if (p / "__init__.py").exists()))


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    roots = [ROOT / "spegel_core", *sorted(p for p in (ROOT / "plugins").iterdir()
                                           if (p / "__init__.py").exists())]
    for root in roots:
        for path in root.rglob("*.py"):
            if "_pb" in path.parts:
                continue
            name = ".".join(path.relative_to(root.parent).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    out: set[str] = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            for alias in node.names:
                full = f"{module}.{alias.name}"
                out.add(full if full in MODULES else module)
    return {target for target in out if target in MODULES and target != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _circles() -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def _in(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_graph_is_read() -> None:
    assert "spegel_core.plugin_manager" in GRAPH["spegel_core.mirror.app"]
    assert "spegel_core.view" in GRAPH["spegel_core.hookspecs"]  # a TYPE_CHECKING import


def test_no_import_circles() -> None:
    circles = [c for c in _circles() if c not in KNOWN_CIRCLES]
    assert not circles, f"import circles: {circles}"


def test_the_relay_knows_the_fetcher_only_as_a_protocol() -> None:
    assert "spegel_core.mirror.peers" not in GRAPH["spegel_core.mirror.peer_relay"]
    assert "spegel_core.mirror.peers" not in GRAPH["spegel_core.mirror.blob_stream"]


def test_hookspecs_node_plugin_manager_is_no_circle() -> None:
    assert "spegel_core.node" not in GRAPH["spegel_core.hookspecs"]
    assert "spegel_core.node" not in GRAPH["spegel_core.plugin_manager"]


def test_the_server_never_imports_the_mirror() -> None:
    bad = {(m, t) for m, targets in GRAPH.items() if _in(m, ("spegel_core.server",))
           for t in targets if _in(t, ("spegel_core.mirror",))}
    assert not bad


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _in(m, MIDDLE)))
def test_the_middle_never_imports_an_edge(module: str) -> None:
    bad = {t for t in GRAPH[module] if _in(t, EDGES)}
    assert not bad, f"{module} imports {sorted(bad)}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if not m.startswith("spegel_core")))
def test_plugins_import_only_the_cores_public_modules(module: str) -> None:
    internal = ("spegel_core.node", "spegel_core.state", "spegel_core.mirror.peers",
                "spegel_core.mirror.peer_relay", "spegel_core.mirror.blob_stream",
                "spegel_core.mirror.service",
                "spegel_core.mirror.routes_v2", "spegel_core.mirror.responses",
                "spegel_core.server.zerocopy", "spegel_core.testing")
    bad = {t for t in GRAPH[module] if _in(t, internal)}
    assert not bad, f"{module} imports core internals {sorted(bad)}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if not _in(m, ("spegel_core.testing",))))
def test_only_the_test_kit_imports_the_test_kit(module: str) -> None:
    bad = {t for t in GRAPH[module] if _in(t, ("spegel_core.testing",))}
    assert not bad, f"{module} imports the test kit {sorted(bad)}"


def test_the_fleet_demo_is_in_the_graph() -> None:
    # the demo's fleet is found (a function-level import), and it is the core's
    assert "spegel_core.localcluster.fleet" in GRAPH["spegel_core.cli.demo_fleet"]
    assert "spegel_core.localcluster.fleet" in GRAPH["spegel_core.testing.fleet"]


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _in(m, PLUGINS)))
def test_no_plugin_imports_another_plugin(module: str) -> None:
    own = module.split(".")[0]
    bad = {t for t in GRAPH[module] if _in(t, PLUGINS) and t.split(".")[0] != own}
    assert not bad, f"{module} imports another plugin: {sorted(bad)}"
