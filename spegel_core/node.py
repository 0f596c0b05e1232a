"""A node: the objects the provider hooks made, opened and closed together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
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
    Router,
    SingleFlightRouter,
    StoreConnection,
)
from spegel_core.registries import MetricsHub
from spegel_core.state import StateTracker

log = logging.getLogger(__name__)


@dataclass
class Node:
    """Everything one spegel instance runs. Built synchronously (so bad settings
    fail before the server starts), opened in the app's lifespan."""

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
        store = store if store is not None else pm.make_content_store(config)
        if hasattr(store, "metrics") and getattr(store, "metrics", None) is None:
            setattr(store, "metrics", metrics)  # noqa: B010  # e.g. StoreConnection events
        discovery = pm.discoveries(config)
        for source in discovery:
            if hasattr(source, "metrics") and getattr(source, "metrics", None) is None:
                source.metrics = metrics  # e.g. DnsQuery events
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
        # Every store reports its state once; one that can lose its backend (it has a
        # ``metrics`` attribute) reports each change itself.
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

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _cancel_background(self) -> None:
        for task in list(self.background):
            task.cancel()
        if self.background:
            await asyncio.gather(*self.background, return_exceptions=True)


async def _shielded(close: object) -> None:
    """Run a close coroutine function so that cancellation cannot cut it short."""
    try:
        await asyncio.shield(close())  # type: ignore[operator]
    except Exception:
        log.exception("error while closing %r", close)
