"""A read-only view of a node's state: what plugins may look at, and nothing else.

``spegel_add_routes`` hands plugins a :class:`NodeView`, not the node itself, so
that pages such as the Prometheus plugin's ``/debug`` read documented values and
the node's internals can change without breaking them. Every member is cheap,
never raises and never blocks; values are snapshots (copies), safe to keep.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from spegel_core.config import SpegelConfig
    from spegel_core.protocols import MetricsSink, Peer, RouterStatus, StoreStatus

__all__ = ["Advertised", "NodeView"]


@dataclass(frozen=True, slots=True)
class Advertised:
    """What a node announces to its peers, at one moment."""

    #: Tag key (``registry/repository:tag``) -> its registry.
    tags: Mapping[str, str] = field(default_factory=dict)
    #: Tag reference -> (registry, digest it points to), for every image in the store.
    images: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    #: Every content digest held and announced.
    digests: frozenset[str] = frozenset()
    #: Digests announced as arriving (the store is still receiving them).
    arriving: frozenset[str] = frozenset()


@runtime_checkable
class NodeView(Protocol):
    """The read-only state of one node, for pages and probes that plugins add.

    The node starts after ``spegel_add_routes`` returns (in the mirror's lifespan):
    read the view inside your route, not in the hook.
    """

    @property
    def config(self) -> SpegelConfig:
        """The frozen configuration."""

    @property
    def started(self) -> bool:
        """Whether the store and router have been started (and not yet closed)."""

    @property
    def store_name(self) -> str:
        """The content store's name (``containerd``, ``oci-layout``, a plugin's)."""

    def store_status(self) -> StoreStatus:
        """Whether the store can answer now, and why not."""

    @property
    def router_name(self) -> str | None:
        """The router's name, or None with ``--router none``."""

    def router_status(self) -> RouterStatus | None:
        """The router's status (node id, address, peers, advertised keys), or None."""

    def advertised(self) -> Advertised:
        """The tags, images and digests the node announces (empty without a router)."""

    def penalties(self) -> Mapping[str, float]:
        """Penalised peers, by a readable name, with the seconds left.

        The name is ``host:port`` for a penalty on every key and ``host:port <key>``,
        with a space, when the penalty is for one key only.
        """

    def single_flight(self) -> Mapping[str, Any] | None:
        """A snapshot of single flight (``docs/fleet.md``), or None when it is off.

        Keys: ``claims`` of this node, ``rendezvous`` (the flights it holds),
        ``counts``, ``wait_s`` and ``fanout``.
        """

    def lookup(self, key: str, count: int, timeout: float) -> AsyncIterator[Peer]:
        """Ask the router who provides ``key`` (nothing without a router).

        Changes no state of the node.
        """

    @property
    def metrics_sinks(self) -> Sequence[MetricsSink]:
        """The sinks ``spegel_register_metrics`` registered for this node."""
