"""Drives a :class:`~spegel_kademlia.lookup.Lookup` over the network, with hedging.

The driver keeps ``alpha`` queries in flight; a query still unanswered after
``hedge_after`` seconds gives up its slot to one extra query (its answer still counts
if it comes). It yields the providers each answer reveals, and stops when the lookup
is done or the deadline passes; closing the generator cancels outstanding queries.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

from spegel_kademlia.ids import Contact
from spegel_kademlia.lookup import Lookup
from spegel_kademlia.messages import Message, Nodes, ProviderInfo, Providers
from spegel_kademlia.rpc import RpcError

#: Sends a lookup's request to a contact and returns its response (raises RpcError).
Query = Callable[[Contact], Awaitable[Message]]


@dataclass(slots=True)
class _Flight:
    contact: Contact
    started: float
    hedged: bool = False


async def drive(
    lookup: Lookup, query: Query, *, hedge_after: float, deadline: float
) -> AsyncGenerator[list[ProviderInfo]]:
    """Run ``lookup`` until done or ``deadline`` (event-loop time); yield new providers."""
    loop = asyncio.get_running_loop()
    flights: dict[asyncio.Task[Message], _Flight] = {}

    def launch(contact: Contact) -> None:
        task = asyncio.ensure_future(query(contact))
        flights[task] = _Flight(contact, loop.time())

    try:
        while True:
            for contact in lookup.next_queries():
                launch(contact)
            now = loop.time()
            if lookup.done or not flights or now >= deadline:
                return
            wake = min([f.started + hedge_after for f in flights.values() if not f.hedged],
                       default=deadline)
            finished, _ = await asyncio.wait(
                flights, timeout=max(0.0, min(wake, deadline) - now),
                return_when=asyncio.FIRST_COMPLETED,
            )
            found: list[ProviderInfo] = []
            for task in finished:
                flight = flights.pop(task)
                found += _feed(lookup, flight.contact, task)
            if found:
                yield found
            now = loop.time()
            for flight in list(flights.values()):
                if not flight.hedged and now - flight.started >= hedge_after:
                    flight.hedged = True
                    extra = lookup.hedge(flight.contact)
                    if extra is not None:
                        launch(extra)
    finally:
        for task in flights:
            task.cancel()


def _feed(lookup: Lookup, contact: Contact, task: asyncio.Task[Message]) -> list[ProviderInfo]:
    if task.cancelled():
        lookup.on_timeout(contact)
        return []
    error = task.exception()
    if error is not None:
        if not isinstance(error, RpcError):
            raise error
        lookup.on_timeout(contact)
        return []
    body = task.result().body
    if isinstance(body, Nodes):
        return lookup.on_response(contact, body.contacts)
    if isinstance(body, Providers):
        return lookup.on_response(contact, body.contacts, body.providers)
    lookup.on_timeout(contact)  # an answer of the wrong kind counts as none
    return []
