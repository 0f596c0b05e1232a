"""Drives a :class:`~spegel_kademlia.lookup.Lookup` over the network, with hedging.

The driver keeps ``alpha`` queries in flight; a query still unanswered after
``hedge_after`` seconds gives up its slot to one extra query (its answer still counts
if it comes). It yields the providers each answer reveals, and stops when the lookup
is done or the deadline passes. It runs on done callbacks (no task per query when the
query function returns futures, as the router's does). Closing the generator cancels
the tasks it made of coroutines; futures it was given run on, so that a query to a
dead contact still ends in a timeout that counts against it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

from spegel_kademlia.ids import Contact
from spegel_kademlia.lookup import Lookup
from spegel_kademlia.messages import Message, Nodes, ProviderInfo, Providers
from spegel_kademlia.rpc import RpcError

#: Sends a lookup's request to a contact; the response (a failure is an RpcError).
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
    flights: dict[asyncio.Future[Message], _Flight] = {}
    owned: set[asyncio.Future[Message]] = set()
    finished: list[asyncio.Future[Message]] = []
    waiter: asyncio.Future[None] | None = None

    def on_done(future: asyncio.Future[Message]) -> None:
        finished.append(future)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def launch(contact: Contact) -> None:
        awaitable = query(contact)
        future = asyncio.ensure_future(awaitable)
        if future is not awaitable:
            owned.add(future)
        flights[future] = _Flight(contact, loop.time())
        future.add_done_callback(on_done)

    try:
        while True:
            for contact in lookup.next_queries():
                launch(contact)
            now = loop.time()
            if lookup.done or not flights or now >= deadline:
                return
            if not finished:
                wake = min([f.started + hedge_after for f in flights.values() if not f.hedged],
                           default=deadline)
                waiter = loop.create_future()
                timer = loop.call_at(min(wake, deadline), _wake, waiter)
                try:
                    await waiter
                finally:
                    timer.cancel()
                    waiter = None
            found: list[ProviderInfo] = []
            for future in finished:
                flight = flights.pop(future)
                owned.discard(future)
                found += _feed(lookup, flight.contact, future)
            finished.clear()
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
        for future in flights:
            future.remove_done_callback(on_done)
        for future in owned:
            future.cancel()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def named_self(message: Message, providers: tuple[ProviderInfo, ...]
               ) -> tuple[ProviderInfo, ...]:
    """``providers`` of an answer, the answering node at the answer's source address.

    If the answering node names itself, it is at the answer's source address and
    mirror port, whatever its entry says.

    A node does not always know the address others reach it at (it may listen on
    ``0.0.0.0``); the datagram's source is that address, as for ADD_PROVIDER, and a
    node can name only itself there, never a third party.
    """
    sender = message.sender
    if not any(p.node_id == sender for p in providers):
        return providers
    return tuple(ProviderInfo(sender, message.source_host, message.mirror_port)
                 if p.node_id == sender else p for p in providers)


def _feed(lookup: Lookup, contact: Contact, future: asyncio.Future[Message]
          ) -> list[ProviderInfo]:
    if future.cancelled():
        lookup.on_timeout(contact)
        return []
    error = future.exception()
    if error is not None:
        if not isinstance(error, RpcError):
            raise error
        lookup.on_timeout(contact)
        return []
    message = future.result()
    body = message.body
    if isinstance(body, Nodes):
        return lookup.on_response(contact, body.contacts)
    if isinstance(body, Providers):
        return lookup.on_response(contact, body.contacts, named_self(message, body.providers))
    lookup.on_timeout(contact)  # an answer of the wrong kind counts as none
    return []
