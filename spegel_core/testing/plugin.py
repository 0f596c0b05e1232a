"""pytest plugin (entry point ``pytest11``): fixtures for testing spegel and its plugins.

Fixtures:

- ``spegel_pm``: a fresh plugin manager (built-ins only, no entry points).
- ``register_plugin``: ``register_plugin(obj, name)`` registers into ``spegel_pm``
  and always unregisters at teardown.
- ``hook_recorder``: records every hook call made through ``spegel_pm``.
- ``make_config``: ``make_config(content_store=..., oci_layout_path=...)`` validates
  settings through the plugin manager's models.
- ``mirror_client``: ``async with mirror_client(config, store=None) as client`` gives an
  ``httpx.AsyncClient`` bound to a mirror app whose lifespan is running.
- ``spegel_node``: ``spegel_node(*args)`` starts a real ``spegel registry`` process on a
  fresh loopback address and stops it at teardown.
- ``containerd_daemon``: a running containerd with its own root, state and sockets
  (:class:`~spegel_core.testing.containerd.ContainerdDaemon`); fails without containerd.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from spegel_core.config import SpegelConfig, load_config
from spegel_core.plugin_manager import PluginManager, create_plugin_manager
from spegel_core.protocols import ContentStore
from spegel_core.testing.containerd import ContainerdDaemon, containerd_available, temporary_daemon
from spegel_core.testing.nodes import NodeProcess, free_loopback_ip


@pytest.fixture
def spegel_pm() -> PluginManager:
    """A fresh plugin manager with the built-in plugins only (no entry points)."""
    return create_plugin_manager(load_entrypoints=False)


@pytest.fixture
def register_plugin(spegel_pm: PluginManager) -> Iterator[Callable[[object, str], None]]:
    """Register a plugin on ``spegel_pm`` for this test: ``register_plugin(plugin, name)``.

    Every plugin registered this way is unregistered at teardown.
    """
    names: list[str] = []

    def register(plugin: object, name: str) -> None:
        spegel_pm.register(plugin, name)
        names.append(name)

    yield register
    for name in reversed(names):
        spegel_pm.unregister(name)


@dataclass
class HookCall:
    """One recorded hook call: the hook's name and its keyword arguments."""

    name: str
    kwargs: dict[str, Any]


@dataclass
class HookRecorder:
    """The hook calls made on ``spegel_pm`` during a test, in order."""

    calls: list[HookCall] = field(default_factory=list)

    def names(self) -> list[str]:
        """The names of the hooks called, in order (repeated for repeated calls)."""
        return [call.name for call in self.calls]

    def get(self, name: str) -> list[HookCall]:
        """The calls of the hook ``name``."""
        return [call for call in self.calls if call.name == name]


@pytest.fixture
def hook_recorder(spegel_pm: PluginManager) -> Iterator[HookRecorder]:
    """Record every hook call made on ``spegel_pm`` until the end of the test."""
    recorder = HookRecorder()

    def before(hook_name: str, hook_impls: Any, kwargs: Mapping[str, Any]) -> None:
        recorder.calls.append(HookCall(hook_name, dict(kwargs)))

    def after(outcome: Any, hook_name: str, hook_impls: Any, kwargs: Any) -> None:
        pass

    undo = spegel_pm.pluggy.add_hookcall_monitoring(before, after)
    yield recorder
    undo()


@pytest.fixture
def make_config(spegel_pm: PluginManager) -> Callable[..., SpegelConfig]:
    """Build a validated config from settings values: ``make_config(mirror_timeout=2)``.

    The router defaults to ``none`` so that in-process tests bind no router port.
    """
    def make(**values: Any) -> SpegelConfig:
        # In-process tests run without a router unless they ask for one: a default
        # Kademlia router would bind the router port of every interface.
        values.setdefault("router", "none")
        return load_config(spegel_pm.settings_registry(), values)

    return make


@pytest.fixture
def mirror_client(spegel_pm: PluginManager) -> Callable[..., Any]:
    """An async context manager giving an ``httpx`` client of an in-process mirror.

    ``async with mirror_client(config, store) as client:`` creates the app, runs its
    lifespan and talks to it through ASGI (no socket).
    """
    import httpx

    from spegel_core.mirror.app import create_app

    @asynccontextmanager
    async def client(config: SpegelConfig,
                     store: ContentStore | None = None) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(config, spegel_pm, store=store)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://mirror") as c:
                yield c

    return client


@pytest.fixture
def spegel_node(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Start a real ``spegel registry`` process on a free loopback address.

    ``spegel_node(*flags, ip=None, port=5000, env=None, wait=True)`` returns the
    :class:`NodeProcess`, ready unless ``wait=False``; every node is stopped at teardown.
    """
    started: list[NodeProcess] = []

    def start(*args: str, ip: str | None = None, port: int = 5000,
              env: dict[str, str] | None = None, wait: bool = True) -> NodeProcess:
        address = ip or free_loopback_ip(port)
        node = NodeProcess(address, port, list(args), tmp_path / f"node-{address}.log",
                           env=env or {})
        started.append(node.start())
        if wait:
            node.wait_ready()
        return node

    yield start
    for node in started:
        node.stop()


@pytest.fixture
def containerd_daemon() -> Iterator[ContainerdDaemon]:
    """A private containerd daemon for the test; fails (never skips) without containerd."""
    if not containerd_available():
        # Not a skip: a test that cannot run is not a passing test (CI installs containerd).
        pytest.fail("containerd and ctr are required (apt-get install containerd; run as root)")
    with temporary_daemon() as daemon:
        yield daemon
