"""The iterative lookup state machine (pure: no I/O, no clock).

A driver asks :meth:`Lookup.next_queries` whom to query, sends the queries, and feeds
back :meth:`Lookup.on_response` / :meth:`Lookup.on_timeout`; it may call
:meth:`Lookup.hedge` when a query is late, which gives that query's slot and its place
among the closest to one more contact. The lookup is done when the ``k`` closest
contacts that are neither failed nor late have all answered, or (GET_PROVIDERS) once
``count`` providers are known, or when nobody is left to ask. Late contacts are waited
for only while fewer than ``k`` others have answered, so a dead contact costs a lookup
the hedge delay, not the RPC timeout, and a slow network still gets its answers. A late
answer always counts.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable

from spegel_kademlia.ids import Contact
from spegel_kademlia.messages import ProviderInfo


class QueryState(enum.Enum):
    """Where a contact stands in a lookup."""

    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    #: Still awaited, but hedged: it holds no slot and no place among the closest.
    LATE = "late"
    RESPONDED = "responded"
    FAILED = "failed"


_GONE = (QueryState.FAILED, QueryState.LATE)


class Lookup:
    """One iterative FIND_NODE or GET_PROVIDERS lookup.

    :param target: the id looked up (a node id or a key id).
    :param seeds: contacts to start from (typically the routing table's closest).
    :param k: how many closest contacts the lookup converges on.
    :param alpha: queries in flight at once.
    :param own_id: this node's id: never queried, never a provider.
    :param count: for GET_PROVIDERS, stop once this many providers are known;
        None for a FIND_NODE lookup.
    :param ignore_providers: provider ids that do not count (already known elsewhere).
    """

    def __init__(
        self,
        target: bytes,
        seeds: Iterable[Contact],
        *,
        k: int = 20,
        alpha: int = 3,
        own_id: bytes | None = None,
        count: int | None = None,
        ignore_providers: Iterable[bytes] = (),
    ) -> None:
        if k < 1 or alpha < 1:
            raise ValueError("k and alpha must be at least 1")
        self.target = target
        self.k = k
        self.alpha = alpha
        self.count = count
        self._target = int.from_bytes(target, "big")
        self._own_id = own_id
        self._order: list[tuple[int, bytes]] = []
        self._contacts: dict[bytes, Contact] = {}
        self._states: dict[bytes, QueryState] = {}
        self._providers: dict[bytes, ProviderInfo] = {}
        self._ignored = set(ignore_providers)
        if own_id is not None:
            self._ignored.add(own_id)
        self.queries = 0
        #: How many contacts are IN_FLIGHT and LATE (kept as states change).
        self._in_flight = 0
        self._late = 0
        self._add_contacts(seeds)

    # -- inputs -----------------------------------------------------------------------
    def next_queries(self) -> list[Contact]:
        """Contacts to query now (marked in flight); empty when none should start."""
        window = self._window()
        if self._done(window):
            return []
        slots = self.alpha - self._in_flight
        picked: list[Contact] = []
        states = self._states
        for node_id in window:
            if slots <= 0:
                break
            if states[node_id] is QueryState.PENDING:
                self._set(node_id, QueryState.IN_FLIGHT)
                picked.append(self._contacts[node_id])
                slots -= 1
        self.queries += len(picked)
        return picked

    def hedge(self, late: Contact | None = None) -> Contact | None:
        """One more contact to query because ``late`` has not answered in time.

        ``late`` stays awaited (its answer still counts) but gives up its slot. Returns
        None when there is nobody left to ask (or the lookup is done).
        """
        if late is not None and self._states.get(late.node_id) is QueryState.IN_FLIGHT:
            self._set(late.node_id, QueryState.LATE)
        window = self._window()
        if self._done(window):
            return None
        for node_id in window:
            if self._states[node_id] is QueryState.PENDING:
                self._set(node_id, QueryState.IN_FLIGHT)
                self.queries += 1
                return self._contacts[node_id]
        return None

    def on_response(
        self,
        contact: Contact,
        contacts: Iterable[Contact] = (),
        providers: Iterable[ProviderInfo] = (),
    ) -> list[ProviderInfo]:
        """Record an answer from ``contact``; returns the providers it newly revealed."""
        if contact.node_id in self._states:
            self._set(contact.node_id, QueryState.RESPONDED)
        self._add_contacts(contacts)
        new: list[ProviderInfo] = []
        for provider in providers:
            if provider.node_id in self._ignored or provider.node_id in self._providers:
                continue
            self._providers[provider.node_id] = provider
            new.append(provider)
        return new

    def on_timeout(self, contact: Contact) -> None:
        """Record that ``contact`` did not answer (or answered nonsense)."""
        if contact.node_id in self._states:
            self._set(contact.node_id, QueryState.FAILED)

    # -- outputs ----------------------------------------------------------------------
    @property
    def done(self) -> bool:
        """Whether the lookup has converged (or found enough providers)."""
        return self._done(self._window())

    def _done(self, window: list[bytes]) -> bool:
        if self.count is not None and len(self._providers) >= self.count:
            return True
        states = self._states
        if any(states[node_id] is not QueryState.RESPONDED for node_id in window):
            return False
        # Late contacts are only skipped when k others answered in their place.
        return len(window) >= self.k or self._late == 0

    @property
    def result(self) -> list[Contact]:
        """The (up to) ``k`` closest contacts that answered, closest first."""
        out: list[Contact] = []
        for _, node_id in self._order:
            if self._states[node_id] is QueryState.RESPONDED:
                out.append(self._contacts[node_id])
                if len(out) == self.k:
                    break
        return out

    @property
    def providers(self) -> list[ProviderInfo]:
        """Providers found so far, in the order they were found."""
        return list(self._providers.values())

    @property
    def outstanding(self) -> int:
        """Queries sent and not yet answered nor failed."""
        return self._in_flight + self._late

    def state(self, node_id: bytes) -> QueryState | None:
        """Where ``node_id`` stands in this lookup (None if never heard of)."""
        return self._states.get(node_id)

    # -- internals --------------------------------------------------------------------
    def _set(self, node_id: bytes, state: QueryState) -> None:
        """Move ``node_id`` (known) to ``state``, keeping the in-flight and late counts."""
        old = self._states[node_id]
        if old is QueryState.IN_FLIGHT:
            self._in_flight -= 1
        elif old is QueryState.LATE:
            self._late -= 1
        if state is QueryState.IN_FLIGHT:
            self._in_flight += 1
        elif state is QueryState.LATE:
            self._late += 1
        self._states[node_id] = state

    def _add_contacts(self, contacts: Iterable[Contact]) -> None:
        for contact in contacts:
            node_id = contact.node_id
            if node_id == self._own_id or node_id in self._states:
                continue
            self._contacts[node_id] = contact
            self._states[node_id] = QueryState.PENDING
            bisect.insort(self._order, (int.from_bytes(node_id, "big") ^ self._target, node_id))

    def _window(self) -> list[bytes]:
        """The ``k`` closest contacts that have neither failed nor turned late."""
        out: list[bytes] = []
        for _, node_id in self._order:
            if self._states[node_id] not in _GONE:
                out.append(node_id)
                if len(out) == self.k:
                    break
        return out

    def __repr__(self) -> str:
        kind = "find_node" if self.count is None else f"get_providers({self.count})"
        return (f"<Lookup {kind} {self.target.hex()[:12]} known={len(self._order)} "
                f"queries={self.queries} outstanding={self.outstanding} "
                f"providers={len(self._providers)} done={self.done}>")
