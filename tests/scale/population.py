"""Who the simulated nodes are: addresses, node ids and advertised keys, all derived
from a seed so that every process computes the same population without talking."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import cached_property

#: Every node's router port, as in a real cluster (one address per node).
ROUTER_PORT = 5001
#: The headless Service name the DNS server answers with every node's address.
DOMAIN = "spegel-bootstrap.sim.local"
#: Share of each node's keys drawn from the popular set (base layers many nodes hold).
POPULAR_SHARE = 0.1
#: Size of the popular set.
POPULAR_KEYS = 20
#: Hosts per third octet (1..254: no .0 or .255 host part).
_PER_OCTET = 254


def host_of(index: int, base_octet: int) -> str:
    """The loopback address of node ``index``: ``127.B.x.y`` (B from ``base_octet`` up)."""
    if index < 0 or index >= _PER_OCTET * _PER_OCTET * (255 - base_octet):
        raise ValueError(f"node index {index} does not fit under 127.{base_octet}/16")
    third, fourth = divmod(index, _PER_OCTET)
    second, third = divmod(third, _PER_OCTET)
    return f"127.{base_octet + second}.{1 + third}.{1 + fourth}"


@dataclass(frozen=True)
class Population:
    """N nodes, each with ``keys_per_node`` keys (a share of them popular), from ``seed``."""

    nodes: int
    keys_per_node: int
    seed: int
    base_octet: int

    def host(self, index: int) -> str:
        """Router address of node ``index``."""
        return host_of(index, self.base_octet)

    def node_id(self, index: int) -> bytes:
        """The 32-byte node id of node ``index``."""
        return hashlib.sha256(f"{self.seed}/node/{index}".encode()).digest()

    def keys(self, index: int) -> tuple[str, ...]:
        """The keys node ``index`` advertises (digest strings), popular ones last."""
        own = tuple(_digest(f"{self.seed}/key/{index}/{j}")
                    for j in range(self.keys_per_node - self.popular_count))
        return own + self._popular_of(index)

    def _popular_of(self, index: int) -> tuple[str, ...]:
        rng = random.Random(f"{self.seed}/popular/{index}")
        return tuple(self.popular[p]
                     for p in rng.sample(range(POPULAR_KEYS), self.popular_count))

    @property
    def popular_count(self) -> int:
        """How many of each node's keys come from the popular set."""
        return min(POPULAR_KEYS, self.keys_per_node, int(self.keys_per_node * POPULAR_SHARE))

    @cached_property
    def popular(self) -> tuple[str, ...]:
        """The popular keys (layers of base images that many nodes hold)."""
        return tuple(_digest(f"{self.seed}/popular-key/{p}") for p in range(POPULAR_KEYS))

    @cached_property
    def popular_holders(self) -> dict[str, frozenset[int]]:
        """Popular key -> indices of the nodes holding it."""
        holders: dict[str, set[int]] = {key: set() for key in self.popular}
        for index in range(self.nodes):
            for key in self._popular_of(index):
                holders[key].add(index)
        return {key: frozenset(found) for key, found in holders.items()}

    def holders(self, index: int, key: str) -> frozenset[int]:
        """Nodes holding ``key``, a key of node ``index``."""
        return self.popular_holders.get(key) or frozenset({index})


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
