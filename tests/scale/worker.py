"""A worker process of the simulation: one event loop hosting a share of the nodes.

The coordinator (:mod:`tests.scale.run`) sends commands over one pipe and reads
results (and a ``("up", index)`` line per node that has bound its socket, so that
the DNS server can list it) from another. Each command is a phase: ``join``,
``announced``, ``late_join``, ``advertise``, ``probe``, ``lookups``, ``reprovide_every``,
``kill``, ``counters``, ``state``, ``quit``; every phase is bounded by a timeout the
coordinator gives.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from spegel_core.protocols import DhtMessage, DnsQuery, MetricEvent
from spegel_dns import DNSDiscovery, LocalAddresses
from spegel_kademlia import KademliaSettings
from tests.scale import fleet
from tests.scale.population import DOMAIN, ROUTER_PORT, Population
from tests.scale.simrouter import LookupResult, SimRouter, traced_lookup

log = logging.getLogger(__name__)

_MIRROR_PORT = 5000


@dataclass(frozen=True)
class Plan:
    """What a worker needs to know, fixed at start."""

    worker: int
    workers: int
    population: Population
    nameserver: str
    settings: dict[str, Any]
    progress: bool = False

    @property
    def indices(self) -> list[int]:
        """The nodes this worker hosts (every ``workers``-th, so joins interleave)."""
        return list(range(self.worker, self.population.nodes, self.workers))


def rss_mb() -> float:
    """Resident memory of this process in MiB (Linux ``/proc``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class SentByType:
    """A metrics sink: datagrams sent by message type (``ping``, ``find_node``...) and
    the duration of every DNS resolution."""

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        self.dns_seconds: list[float] = []

    def emit(self, event: MetricEvent) -> None:
        """Count a sent :class:`DhtMessage`, note a :class:`DnsQuery`; ignore the rest."""
        if isinstance(event, DhtMessage):
            if event.outcome == "sent":
                self.sent[event.type] += 1
        elif isinstance(event, DnsQuery):
            self.dns_seconds.append(event.duration_s)


def _phases(router: SimRouter) -> tuple[float, float, float] | None:
    """Seconds of DNS, seed answers and the rest of the self lookup, if all happened."""
    marks = (router.started_at, router.resolved_at, router.seeds_answered_at, router.ready_at)
    if any(mark is None for mark in marks):
        return None
    start, resolved, pinged, ready = (float(mark or 0.0) for mark in marks)
    return resolved - start, pinged - resolved, ready - pinged


def _count(extra: Mapping[str, object], name: str) -> int:
    value = extra.get(name, 0)
    return value if isinstance(value, int) else 0


#: Keys a node announces in one ``advertise`` call of the rollout (its router's cap).
_ANNOUNCE_BATCH = 8


class _Pacer:
    """At most ``rate`` units a second (0: no limit), taken in order."""

    def __init__(self) -> None:
        self.rate = 0.0
        self._next = 0.0

    async def take(self, units: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        wait = self._next - now
        self._next = max(self._next, now) + units / self.rate
        if wait > 0:
            await asyncio.sleep(wait)


class Worker:
    """Hosts the routers of :attr:`Plan.indices` and runs the phases on them."""

    def __init__(self, plan: Plan, events: Connection) -> None:
        self.plan = plan
        self.pop = plan.population
        self.events = events
        self.settings = KademliaSettings(**plan.settings)
        self.routers: dict[int, SimRouter] = {}
        self.discoveries: dict[int, DNSDiscovery] = {}
        self.alive: set[int] = set()
        self.rng = random.Random(f"{self.pop.seed}/worker/{plan.worker}")
        self.sink = SentByType()
        self.phase = "start"
        #: Each node's first announcement of its keys, started as it joins (rollout).
        self.announcing: dict[int, asyncio.Future[float]] = {}
        self.pacer = _Pacer()
        self.rollout_t0 = 0.0

    def _make(self, index: int) -> SimRouter:
        host = self.pop.host(index)
        discovery = DNSDiscovery(DOMAIN, port=ROUTER_PORT, nameservers=[self.plan.nameserver],
                                 own=LocalAddresses([host]), metrics=self.sink,
                                 rng=random.Random(f"{self.pop.seed}/dns/{index}"))
        self.discoveries[index] = discovery
        return SimRouter(host=host, port=ROUTER_PORT, mirror_port=_MIRROR_PORT,
                         discovery=[discovery], settings=self.settings, metrics=self.sink,
                         node_id=self.pop.node_id(index),
                         rng=random.Random(f"{self.pop.seed}/router/{index}"))

    # -- phases ----------------------------------------------------------------------------
    async def join(self, t0: float, rate: float, limit: float, announce: int = 0,
                   announce_rate: float = 0.0) -> dict[str, Any]:
        """Start each node at ``t0 + index / rate``; wait (bounded) until all are ready.

        With ``announce`` > 0, each node starts announcing its keys as soon as it has
        started, as a real node does (its state tracker advertises what containerd
        holds); at most ``announce`` nodes of this worker announce at once, in the
        order they joined (hundreds of nodes share one core here), and while nodes
        join, at most ``announce_rate`` keys a second (0: no limit), so that the
        joins keep CPU (a real node has its own); all at once after the last join.
        """
        deadline = time.monotonic() + limit
        self.rollout_t0 = t0
        slots = asyncio.Semaphore(max(1, announce))
        self.pacer.rate = announce_rate
        cpu = time.process_time()
        lag = 0.0
        for index in self.plan.indices:
            if time.monotonic() > deadline:
                break  # too far behind: the nodes not started count as not ready
            delay = t0 + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            lag = max(lag, -delay)
            router = self._make(index)
            self.routers[index] = router
            await router.start()
            self.alive.add(index)
            self.events.send(("up", index))
            if announce > 0:
                self.announcing[index] = asyncio.ensure_future(self._announce(index, slots))
        # Ready first; then the rest of each first bootstrap (bucket refresh), so that
        # the next phase starts on a quiet network and this one counts all join traffic.
        for event in ("ready", "joined"):
            pending = [asyncio.ensure_future(getattr(r, event).wait())
                       for r in self.routers.values()]
            _, late = await asyncio.wait(pending, timeout=max(0.01, deadline - time.monotonic()))
            for task in late:
                task.cancel()
        self.pacer.rate = 0.0
        ready = {i: r.ready_at - r.started_at for i, r in self.routers.items()
                 if r.ready_at is not None and r.started_at is not None}
        joined = {i: r.joined_at - r.started_at for i, r in self.routers.items()
                  if r.joined_at is not None and r.started_at is not None}
        phases = {i: _phases(r) for i, r in self.routers.items() if _phases(r) is not None}
        return {"ready": ready, "joined": joined, "phases": phases, "start_lag_s": lag,
                "cpu_s": time.process_time() - cpu,
                "started": sorted(self.routers)}

    async def _announce(self, index: int, slots: asyncio.Semaphore) -> float:
        # A node's first announcement needs contacts (the router keeps keys advertised
        # before its first bootstrap and announces them then, outside this pacing).
        router = self.routers[index]
        await router.ready.wait()
        keys = list(self.pop.keys(index))
        async with slots:
            for start in range(0, len(keys), _ANNOUNCE_BATCH):
                batch = keys[start:start + _ANNOUNCE_BATCH]
                await self.pacer.take(len(batch))
                await router.advertise(batch)
        return time.monotonic()

    async def announced(self, limit: float) -> dict[str, Any]:
        """Wait (bounded) until every node's first announcement, started as it joined,
        is done; seconds from the rollout's start to the last one."""
        tasks = list(self.announcing.values())
        late: set[asyncio.Future[float]] = set()
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=limit)
        for task in late:
            task.cancel()
        done = [t.result() for t in tasks if t.done() and not t.cancelled()
                and t.exception() is None]
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("announce failed", exc_info=task.exception())
        return {"seconds": max(done, default=self.rollout_t0) - self.rollout_t0,
                "unfinished": len(tasks) - len(done)}

    async def late_join(self, indices: list[int], gap: float, limit: float) -> dict[str, Any]:
        """Start nodes ``indices`` one at a time on a quiet network; their ready times.

        Each waits for the previous one's whole first bootstrap, then ``gap`` s, so
        what is measured is the protocol, not a queue of joins sharing the CPU.
        """
        deadline = time.monotonic() + limit
        ready: dict[int, float] = {}
        for index in indices:
            if time.monotonic() > deadline:
                break
            router = self._make(index)
            self.routers[index] = router
            await router.start()
            self.alive.add(index)
            self.events.send(("up", index))
            try:
                async with asyncio.timeout(max(0.01, deadline - time.monotonic())):
                    await router.joined.wait()
            except TimeoutError:
                break
            if router.ready_at is not None and router.started_at is not None:
                ready[index] = router.ready_at - router.started_at
            await asyncio.sleep(gap)
        return {"ready": ready}

    async def advertise(self, concurrency: int, limit: float) -> dict[str, Any]:
        """Every node advertises its keys, at most ``concurrency`` nodes at a time.

        The router paces its own provides; this cap keeps the whole worker within
        what one core can do, since here hundreds of nodes share it.
        """
        slots = asyncio.Semaphore(concurrency)
        started = time.monotonic()

        async def one(index: int) -> None:
            async with slots:
                await self.routers[index].advertise(list(self.pop.keys(index)))

        # Late joiners (index >= N) are measuring probes: they hold no content.
        tasks = [asyncio.ensure_future(one(i)) for i in sorted(self.alive)
                 if i < self.pop.nodes]
        done, late = await asyncio.wait(tasks, timeout=limit) if tasks else (set(), set())
        for task in late:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                log.error("advertise failed", exc_info=task.exception())
        return {"seconds": time.monotonic() - started, "unfinished": len(late)}

    async def lookups(self, count: int, concurrency: int, alive: list[int],
                      budget: float, limit: float, holders: list[int] | None = None
                      ) -> dict[str, Any]:
        """``count`` lookups (``budget`` s each) from this worker's live nodes of keys that
        live nodes hold; the phase stops after ``limit`` s.

        With ``holders``: keys that only one node holds, a node of ``holders``.
        """
        everyone = set(alive)
        queriers = sorted(self.alive)
        hosts = {i: self.pop.host(i) for i in alive}
        slots = asyncio.Semaphore(concurrency)
        results: list[LookupResult] = []

        async def one() -> None:
            querier = self.rng.choice(queriers)
            target = self.rng.choice(alive)
            while target == querier and len(alive) > 1:
                target = self.rng.choice(alive)
            if holders:
                target = self.rng.choice(holders)
                while target == querier and len(holders) > 1:
                    target = self.rng.choice(holders)
                unique = self.pop.keys(target)[:self.pop.keys_per_node - self.pop.popular_count]
                key = self.rng.choice(unique)
            else:
                key = self.rng.choice(self.pop.keys(target))
            wanted = frozenset(hosts[i] for i in self.pop.holders(target, key) & everyone
                               if i != querier)
            async with slots:
                results.append(await traced_lookup(self.routers[querier], key, wanted,
                                                   budget=budget))

        tasks = [asyncio.ensure_future(one()) for _ in range(count if queriers else 0)]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=limit)
            for task in late:
                task.cancel()
        return {"results": [(r.ok, r.seconds, r.hops, r.queries) for r in results],
                "unfinished": count - len(results) if queriers else 0}

    async def probe(self, kind: str, count: int) -> dict[str, Any]:
        """``count`` isolated provides of fresh keys, or FIND_NODEs of random ids, one at a time.

        Steady state spreads reproviding over 15 minutes, so each provide runs on an
        idle network; these measure what one costs then (the bulk advertise phase is
        a saturated closed loop, where late answers add hedged queries).
        """
        nodes = sorted(self.alive)
        queries = answered = 0
        for n in range(count if nodes else 0):
            router = self.routers[self.rng.choice(nodes)]
            if kind == "provide":
                trace = await router.probe_provide(f"sha256:probe-{self.plan.worker}-{n}")
            else:
                trace = await router.probe_find_node(self.rng.randbytes(32))
            queries += trace.queries
            answered += trace.answered
        stale = [len(self.routers[i].table.stale_buckets(0.0)) for i in nodes]
        return {"count": count if nodes else 0, "queries": queries, "answered": answered,
                "stale_buckets": sum(stale) / len(stale) if stale else 0.0}

    async def kill(self, indices: list[int]) -> dict[str, Any]:
        """Kill the listed nodes of this worker at once (no goodbyes)."""
        victims = [i for i in indices if i in self.alive]
        self.alive.difference_update(victims)
        await asyncio.gather(*(self.routers[i].kill() for i in victims))
        await asyncio.gather(*(self.discoveries[i].aclose() for i in victims))
        return {"killed": len(victims)}

    def reprovide_every(self, interval: float) -> dict[str, Any]:
        """Change every live node's reprovide period (see :meth:`SimRouter.reprovide_every`)."""
        for index in self.alive:
            self.routers[index].reprovide_every(interval)
        return {}

    async def fleet(self, t0: float, spread: float, fanout: int,
                    lookup: bool = False) -> dict[str, Any]:
        """Every live node claims the same new digest within ``spread`` s (tests.scale.fleet)."""
        return await fleet.claim_all({i: self.routers[i] for i in sorted(self.alive)},
                                     t0=t0, spread=spread, fanout=fanout, digest=fleet.DIGEST,
                                     rng=self.rng, lookup=lookup)

    def counters(self) -> dict[str, Any]:
        """Datagrams sent and received, RPC timeouts, provides and DNS resolutions so far."""
        totals = dict.fromkeys(("datagrams_sent", "datagrams_received", "rpc_timeouts",
                                "provides", "provide_failures", "unstored_keys",
                                "reannounced_keys"), 0)
        for router in self.routers.values():
            extra = router.status().extra
            for name in totals:
                totals[name] += _count(extra, name)
        totals.update({f"sent_{kind}": count for kind, count in self.sink.sent.items()})
        totals["dns_resolutions"] = sum(d.calls for d in self.discoveries.values())
        totals["bootstraps"] = sum(_count(r.status().extra, "bootstrap_attempts")
                                   for r in self.routers.values())
        return totals

    def state(self) -> dict[str, Any]:
        """Routing table sizes of live nodes, provider records, this process's memory."""
        gc.collect()
        live = [self.routers[i] for i in sorted(self.alive)]
        return {"tables": [len(r.table) for r in live],
                "buckets": [r.table.nonempty_buckets for r in live],
                "records": [len(r.providers) for r in live],
                "dns_seconds": self.sink.dns_seconds,
                "rss_mb": rss_mb(), "nodes": len(self.routers)}

    async def quit(self) -> dict[str, Any]:
        """Close every node (as killed: no withdrawal storm) and every resolver."""
        await self.kill(sorted(self.alive))
        return {}

    # -- command loop ----------------------------------------------------------------------
    async def _progress(self, every: float = 5.0) -> None:
        """Log how far this worker is, and how late its event loop runs, every few seconds."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(every)
            lag = loop.time() - before - every
            routers = list(self.routers.values())
            log.warning("progress: phase=%s nodes=%d ready=%d joined=%d sent=%d timeouts=%d "
                        "loop_lag=%.3fs gc_longest=%.3fs gc_total=%.1fs", self.phase, len(routers),
                        sum(r.ready_at is not None for r in routers),
                        sum(r.joined_at is not None for r in routers),
                        sum(_count(r.status().extra, "datagrams_sent") for r in routers),
                        sum(_count(r.status().extra, "rpc_timeouts") for r in routers), lag,
                        GC_CLOCK.longest, GC_CLOCK.total)

    async def serve(self, commands: Connection) -> None:
        """Run commands until ``quit`` (or the coordinator goes away)."""
        self.events.send(("hello", {"rss_mb": rss_mb(), "indices": len(self.plan.indices)}))
        progress = asyncio.ensure_future(self._progress()) if self.plan.progress else None
        try:
            await self._serve(commands)
        finally:
            if progress is not None:
                progress.cancel()

    async def _serve(self, commands: Connection) -> None:
        while True:
            try:
                name, args = await asyncio.to_thread(commands.recv)
            except EOFError:
                await self.quit()
                return
            self.phase = name
            gc.collect()  # between phases, where a pause costs nothing
            if name == "join":
                result = await self.join(**args)
            elif name == "announced":
                result = await self.announced(**args)
            elif name == "late_join":
                result = await self.late_join(**args)
            elif name == "advertise":
                result = await self.advertise(**args)
            elif name == "lookups":
                result = await self.lookups(**args)
            elif name == "kill":
                result = await self.kill(**args)
            elif name == "probe":
                result = await self.probe(**args)
            elif name == "reprovide_every":
                result = self.reprovide_every(**args)
            elif name == "fleet":
                result = await self.fleet(**args)
            elif name == "counters":
                result = self.counters()
            elif name == "state":
                result = self.state()
            elif name == "quit":
                self.events.send(("done", name, await self.quit()))
                return
            else:
                raise ValueError(f"unknown command {name!r}")
            self.events.send(("done", name, result))


class _GcClock:
    """Time spent in garbage collection (the longest pause and the total)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.total = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            pause = time.perf_counter() - self._started
            self.total += pause
            self.longest = max(self.longest, pause)


GC_CLOCK = _GcClock()


def main(plan: Plan, commands: Connection, events: Connection) -> None:
    """Entry point of a worker process (uvloop when installed)."""
    # One heap holds hundreds of nodes here (a real node's holds one): a full collection
    # would stall them all for up to a second and time their RPCs out. The youngest
    # generation is still collected; older ones between phases only.
    gc.freeze()
    gc.set_threshold(10_000, 1_000_000, 1_000_000)
    gc.callbacks.append(GC_CLOCK)
    logging.basicConfig(level=logging.WARNING,
                        format=f"worker {plan.worker}: %(levelname)s %(name)s: %(message)s")
    # Every node would warn that the DHT runs without a cluster key: thousands of lines.
    logging.getLogger("spegel_kademlia.node").setLevel(logging.ERROR)
    logging.getLogger(__name__).setLevel(logging.INFO)
    try:
        import uvloop
    except ImportError:
        asyncio.run(Worker(plan, events).serve(commands))
    else:
        uvloop.run(Worker(plan, events).serve(commands))
