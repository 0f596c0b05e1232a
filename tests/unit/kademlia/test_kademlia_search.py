"""The lookup driver: parallel queries, hedging a late one, deadline, cancellation."""

from __future__ import annotations

import asyncio

from spegel_kademlia.ids import Contact
from spegel_kademlia.lookup import Lookup, QueryState
from spegel_kademlia.messages import Message, Nodes, ProviderInfo, Providers
from spegel_kademlia.search import drive, named_self

TARGET = bytes(32)
OWN = b"\xff" * 32


def contact(n: int) -> Contact:
    return Contact(n.to_bytes(32, "big"), f"10.0.0.{n}", 5001)


def reply(body: Nodes | Providers, sender: Contact) -> Message:
    return Message(body, 1, sender.node_id, 5000, sender.host, sender.port)


async def run(lookup: Lookup, silent: frozenset[int] = frozenset(), *,
              hedge_after: float = 0.02, budget: float = 60.0,
              providers: dict[int, ProviderInfo] | None = None,
              ) -> tuple[list[ProviderInfo], list[int], list[int], float]:
    """Drive ``lookup``; returns what was found, asked, cancelled, and the loop time taken.

    A query to a contact in ``silent`` never ends on its own: the driver must stop
    waiting for it (hedge, deadline) and cancel it when the lookup ends. The test is
    given 15 s: a lookup that waits out a silent contact instead of hedging around it
    runs to its 60 s deadline and fails here.
    """
    asked: list[int] = []
    cancelled: list[int] = []

    async def query(c: Contact) -> Message:
        n = int.from_bytes(c.node_id, "big")
        asked.append(n)
        if n in silent:
            try:
                await asyncio.Event().wait()  # never set
            except asyncio.CancelledError:
                cancelled.append(n)
                raise
        found = (providers or {}).get(n)
        return reply(Providers((found,) if found else (), ()), c)

    loop = asyncio.get_running_loop()
    started = loop.time()
    found: list[ProviderInfo] = []
    async with asyncio.timeout(15):
        async for batch in drive(lookup, query, hedge_after=hedge_after,
                                 deadline=loop.time() + budget):
            found += batch
    elapsed = loop.time() - started
    await asyncio.sleep(0)  # one loop turn: the driver's cancellations land
    return found, asked, cancelled, elapsed


async def test_a_late_query_is_hedged_and_does_not_hold_the_lookup() -> None:
    seeds = [contact(n) for n in range(1, 6)]
    lookup = Lookup(TARGET, seeds, k=3, alpha=2, own_id=OWN)
    # Contact 1 (the closest) never answers: the lookup ends by converging around it
    # (done), not by its deadline, and the query still waiting is cancelled.
    _, asked, cancelled, _ = await run(lookup, frozenset({1}))
    assert lookup.done
    assert asked[:2] == [1, 2] and 3 in asked and 4 in asked
    assert cancelled == [1]
    assert [c.port for c in lookup.result] == [5001] * 3
    assert contact(1) not in lookup.result


async def test_providers_are_yielded_as_they_arrive_and_stop_the_lookup() -> None:
    seeds = [contact(n) for n in range(1, 10)]
    lookup = Lookup(TARGET, seeds, k=5, alpha=3, own_id=OWN, count=1)
    holder = ProviderInfo(b"\x77" * 32, "10.7.7.7", 5000)
    found, asked, _, _ = await run(lookup, providers={2: holder})
    assert found == [holder]
    assert len(asked) == 3  # the first round already had it


async def test_deadline_ends_the_lookup_and_cancels_outstanding_queries() -> None:
    lookup = Lookup(TARGET, [contact(1), contact(2)], alpha=2, own_id=OWN)
    _, asked, cancelled, elapsed = await run(lookup, frozenset({1, 2}), budget=0.1)
    # The deadline, not an answer, ended it. No upper bound: a busy machine runs late.
    assert elapsed >= 0.09
    assert sorted(asked) == [1, 2] == sorted(cancelled)
    assert not lookup.done


async def test_closing_the_generator_cancels_queries() -> None:
    cancelled: list[int] = []

    async def query(c: Contact) -> Message:
        try:
            if c == contact(1):
                return reply(Providers((ProviderInfo(b"\x55" * 32, "10.5.5.5", 5000),), ()), c)
            await asyncio.Event().wait()  # never set: only the driver's cancel ends it
            raise AssertionError("not cancelled")
        except asyncio.CancelledError:
            cancelled.append(int.from_bytes(c.node_id, "big"))
            raise

    lookup = Lookup(TARGET, [contact(1), contact(2), contact(3)], own_id=OWN, count=5)
    loop = asyncio.get_running_loop()
    gen = drive(lookup, query, hedge_after=1.0, deadline=loop.time() + 5)
    assert len(await anext(gen)) == 1
    await gen.aclose()
    await asyncio.sleep(0)
    assert sorted(cancelled) == [2, 3]


async def test_closing_the_generator_leaves_given_futures_running() -> None:
    # The router passes the RPC futures themselves: a query the lookup stops waiting
    # for still runs to its answer or timeout (which counts against a dead contact).
    loop = asyncio.get_running_loop()
    futures: dict[int, asyncio.Future[Message]] = {}

    def query(c: Contact) -> asyncio.Future[Message]:
        n = int.from_bytes(c.node_id, "big")
        futures[n] = future = loop.create_future()
        if n == 1:
            future.set_result(reply(Providers((ProviderInfo(b"\x55" * 32, "10.5.5.5", 5000),),
                                              ()), c))
        return future

    lookup = Lookup(TARGET, [contact(1), contact(2), contact(3)], own_id=OWN, count=5)
    gen = drive(lookup, query, hedge_after=1.0, deadline=loop.time() + 5)
    assert len(await anext(gen)) == 1
    await gen.aclose()
    await asyncio.sleep(0)
    assert sorted(futures) == [1, 2, 3]
    assert not futures[2].done() and not futures[3].done()
    futures[2].set_result(reply(Nodes(()), contact(2)))  # nobody listens any more
    await asyncio.sleep(0)
    # The closed driver no longer feeds the lookup.
    assert lookup.state(contact(2).node_id) is QueryState.IN_FLIGHT


def test_a_node_naming_itself_is_taken_at_the_answers_source_address() -> None:
    sender, other = b"\x01" * 32, b"\x02" * 32
    message = Message(Providers(), 1, sender, 5123, source_host="127.0.0.9", source_port=5001)
    given = (ProviderInfo(sender, "127.0.0.1", 1), ProviderInfo(other, "127.0.0.7", 5000))
    assert named_self(message, given) == (ProviderInfo(sender, "127.0.0.9", 5123), given[1])
    assert named_self(message, given[1:]) == given[1:]
