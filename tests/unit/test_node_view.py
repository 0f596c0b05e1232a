"""The read-only NodeView that spegel_add_routes hands plugins: conformance and behaviour."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from spegel_core import hookimpl
from spegel_core.config import SpegelConfig
from spegel_core.errors import PeerConnectError, PeerNotFound
from spegel_core.node import Node
from spegel_core.plugin_manager import PluginManager
from spegel_core.protocols import Peer, RouterStatus, StoreStatus
from spegel_core.testing.fakes import MemoryContentStore, MemoryNetwork, MemoryRouter
from spegel_core.view import Advertised, NodeView

#: Every member of the Protocol: the documented surface, and all of it.
MEMBERS = sorted(name for name in vars(NodeView)
                 if not name.startswith("_") and name not in ("mro",))


class _RouterPlugin:
    @hookimpl
    def spegel_make_router(self, config: SpegelConfig) -> MemoryRouter | None:
        if config.core.router != "memory":
            return None
        return MemoryRouter(MemoryNetwork(), Peer("127.0.0.2", 5000, b"\x01" * 32))


def test_the_protocol_has_the_documented_members() -> None:
    assert MEMBERS == ["advertised", "config", "lookup", "metrics_sinks", "penalties",
                       "router_name", "router_status", "single_flight", "started", "store_name",
                       "store_status"]
    for name in MEMBERS:
        assert (getattr(NodeView, name).__doc__ or "").strip(), f"{name} has no docstring"


def test_a_node_without_router(spegel_pm: PluginManager,
                               make_config: Callable[..., SpegelConfig]) -> None:
    node = Node.build(make_config(content_store="memory"), spegel_pm,
                      store=MemoryContentStore())
    view = node.view()
    assert isinstance(view, NodeView)
    assert view.config is node.config and view.started is False
    assert view.store_name == "memory"
    assert view.store_status() == StoreStatus(False, "not started")
    assert view.router_name is None and view.router_status() is None
    assert view.advertised() == Advertised() and dict(view.penalties()) == {}
    assert list(view.metrics_sinks) == node.metrics.sinks


async def test_a_node_with_router(spegel_pm: PluginManager,
                                  register_plugin: Callable[[Any, str], None],
                                  make_config: Callable[..., SpegelConfig]) -> None:
    register_plugin(_RouterPlugin(), "memory-router")
    store = MemoryContentStore()
    node = Node.build(make_config(content_store="memory", router="memory"), spegel_pm,
                      store=store)
    view = node.view()
    assert isinstance(view, NodeView)
    assert view.router_name == "memory"
    assert isinstance(view.router_status(), RouterStatus)
    assert node.tracker is not None and node.peers is not None
    node.tracker.digests.add("sha256:" + "a" * 64)
    snapshot = view.advertised()
    node.tracker.digests.clear()
    assert snapshot.digests == {"sha256:" + "a" * 64}  # a copy, not the live set
    digest = "sha256:" + "b" * 64
    node.peers.penalise(Peer("127.0.0.3", 5000), PeerConnectError("connection refused"), digest)
    node.peers.penalise(Peer("127.0.0.4", 5000), PeerNotFound("404"), digest)
    penalties = dict(view.penalties())
    assert set(penalties) == {"127.0.0.3:5000", f"127.0.0.4:5000 {digest}"}
    assert all(0 < left <= node.config.core.mirror_peer_penalty
               for left in penalties.values())
    assert [peer.url async for peer in view.lookup(digest, 3, 0.1)] == []


def test_the_view_cannot_be_written(spegel_pm: PluginManager,
                                    make_config: Callable[..., SpegelConfig]) -> None:
    view = Node.build(make_config(content_store="memory"), spegel_pm,
                      store=MemoryContentStore()).view()
    for name in ("config", "started", "store_name", "router_name", "metrics_sinks", "store"):
        with pytest.raises(AttributeError):
            setattr(view, name, None)
