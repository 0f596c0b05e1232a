"""A node: the objects the provider hooks made, opened and closed together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from spegel_core.config import SpegelConfig
from spegel_core.mirror.peers import PeerFetcher
from spegel_core.mirror.singleflight import SingleFlight
from spegel_core.plugin_manager import PluginManager
from spegel_core.protocols import (
    ContentStore,
    Discovery,
    MetricsSink,
    Peer,
    Router,
    RouterStatus,
    SingleFlightRouter,
    StoreConnection,
    StoreStatus,
)
from spegel_core.registries import MetricsHub
from spegel_core.state import StateTracker
from spegel_core.view import Advertised, NodeView

log = logging.getLogger(__name__)


@dataclass
class Node:
    """Everything one spegel instance runs.

    Built synchronously (so bad settings fail before the server starts), opened in
    the app's lifespan.
    """

    config: SpegelConfig
    pm: PluginManager
    store: ContentStore
    metrics: MetricsHub
    discovery: list[Discovery] = field(default_factory=list)
    router: Router | None = None
    started: bool = False
    background: set[asyncio.Task[None]] = field(default_factory=set)
    peers: PeerFetcher | None = None
    tracker: StateTracker | None = None
    #: Single flight (``--single-flight`` and a router with the optional part).
    flight: SingleFlight | None = None

    @classmethod
    def build(cls, config: SpegelConfig, pm: PluginManager,
              store: ContentStore | None = None) -> Node:
        """Run the provider hooks; raises ConfigError/PluginError for bad settings."""
        pm.configure(config)
        metrics = MetricsHub(pm.metrics_sinks(config))
        # What a store or source emits to is a hook argument: a store passed in
        # here was made by the caller, who wires its metrics.
        store = store if store is not None else pm.make_content_store(config, metrics)
        discovery = pm.discoveries(config, metrics)
        router = pm.make_router(config, discovery, metrics)
        node = cls(config=config, pm=pm, store=store, metrics=metrics, discovery=discovery,
                   router=router)
        if router is not None:
            node.peers = PeerFetcher.from_config(config, router, metrics)
            node.tracker = StateTracker(config, store, router, metrics)
            if config.core.single_flight and isinstance(router, SingleFlightRouter):
                node.flight = SingleFlight(router, store, node.peers, metrics,
                                           wait=config.core.single_flight_wait,
                                           fanout=config.core.peer_fanout)
        return node

    async def open(self, stack: AsyncExitStack) -> None:
        """Start the store and the router; register their closing on ``stack``."""
        stack.callback(self.pm.unconfigure, self.config)
        await self.store.start()
        # Every store reports its state once; one that can lose its backend reports
        # each later change itself, to the ``metrics`` of spegel_make_content_store.
        self.metrics.emit(StoreConnection(self.store.status().ready))
        stack.push_async_callback(_shielded, self.store.aclose)
        for source in self.discovery:
            stack.push_async_callback(_shielded, source.aclose)
        if self.router is not None:
            await self.router.start()
            stack.push_async_callback(_shielded, self.router.aclose)
        if self.peers is not None:
            stack.push_async_callback(_shielded, self.peers.aclose)
        stack.push_async_callback(self._cancel_background)
        if self.tracker is not None:
            self.spawn(self.tracker.run(), "state-tracker")
        if self.flight is not None:
            self.spawn(self.flight.run(), "single-flight")
        self.started = True
        log.info("node started: store=%s router=%s", self.store.name,
                 self.router.name if self.router else "none")

    def view(self) -> NodeView:
        """The read-only :class:`~spegel_core.view.NodeView` handed to plugins."""
        return _NodeState(self)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``coro`` as a named background task of the node, cancelled when it closes."""
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _cancel_background(self) -> None:
        for task in list(self.background):
            task.cancel()
        if self.background:
            await asyncio.gather(*self.background, return_exceptions=True)


def penalty_table(peers: PeerFetcher | None) -> dict[str, float]:
    """Penalised peers as readable names -> seconds left (what :class:`NodeView` shows).

    The one place that knows how :class:`PeerFetcher` keeps its penalty list.
    """
    if peers is None:
        return {}
    return {**peers.penalties, **peers.content_penalties}


class _NodeState:
    """:class:`~spegel_core.view.NodeView` of a :class:`Node` (reads it, never changes it)."""

    __slots__ = ("_node",)

    def __init__(self, node: Node) -> None:
        self._node = node

    @property
    def config(self) -> SpegelConfig:
        return self._node.config

    @property
    def started(self) -> bool:
        return self._node.started

    @property
    def store_name(self) -> str:
        return self._node.store.name

    def store_status(self) -> StoreStatus:
        return self._node.store.status()

    @property
    def router_name(self) -> str | None:
        router = self._node.router
        return router.name if router is not None else None

    def router_status(self) -> RouterStatus | None:
        router = self._node.router
        return router.status() if router is not None else None

    def advertised(self) -> Advertised:
        tracker = self._node.tracker
        if tracker is None:
            return Advertised()
        return Advertised(tags=dict(tracker.tags), images=dict(tracker.images),
                          digests=frozenset(tracker.digests),
                          arriving=frozenset(tracker.arriving))

    def penalties(self) -> Mapping[str, float]:
        return penalty_table(self._node.peers)

    def single_flight(self) -> Mapping[str, Any] | None:
        flight = self._node.flight
        return flight.snapshot() if flight is not None else None

    def lookup(self, key: str, count: int, timeout: float) -> AsyncIterator[Peer]:
        router = self._node.router
        return router.lookup(key, count, timeout) if router is not None else _no_peers()

    @property
    def metrics_sinks(self) -> Sequence[MetricsSink]:
        return tuple(self._node.metrics.sinks)

    def __repr__(self) -> str:
        return f"<NodeView store={self.store_name} router={self.router_name} " \
               f"started={self.started}>"


async def _no_peers() -> AsyncIterator[Peer]:
    return
    yield  # an async generator that yields nothing


async def _shielded(close: object) -> None:
    """Run a close coroutine function so that cancellation cannot cut it short."""
    try:
        await asyncio.shield(close())  # type: ignore[operator]
    except Exception:
        log.exception("error while closing %r", close)
