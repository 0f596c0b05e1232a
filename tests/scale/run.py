"""``nox -s scale -- --nodes N [--json PATH] [--churn F] [--join-rate R] [--keys-per-node K]``.

The coordinator: starts dnsmasq on 127.0.0.1 (a free port) answering
``spegel-bootstrap.sim.local`` with the address of every node that has started
(as a headless Service lists running pods), spawns worker processes
(:mod:`tests.scale.worker`), and runs the phases one after the other, each bounded
by a timeout:

1. **rollout**: node ``i`` starts at ``i / join_rate`` s; each bootstraps from DNS
   and starts announcing its keys at once, as a real node does (paced: a few nodes
   per worker at a time, in join order, since hundreds of nodes share one core
   here). Right after the last of those announcements, **rollout lookups** of keys
   that one node holds, from random nodes (and again for the first 5 % of joiners).
   Then ``--late-joiners`` more nodes join one at a time (per worker) on the quiet
   network: their ready time is the protocol's, not that of a queue of joins.
2. (``--separate-advertise`` only) **advertise**: every node announces its keys
   after all have joined, as the simulation did before issue 14.
3. **probes**: a few provides and FIND_NODEs one at a time (steady-state costs), then
   **lookups** of keys other nodes hold, from random nodes.
4. **overload** (``--overload F``, off by default): reprovide interval shortened so
   that reproviding asks F times what the advertise phase measured the CPU can do;
   lookups while that runs.
5. **churn**: ``--churn`` of the nodes are killed at once (no goodbyes), then
   lookups of keys that live nodes hold.

It prints a table and writes JSON (``--json``); :mod:`tests.scale.report` explains
each figure. Network: loopback only (127.0.0.0/8), one address per node, UDP 5001.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import signal
import socket
import sys
import tempfile
import time
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from tests.scale import fleet, report
from tests.scale.dns import QuietDnsServer
from tests.scale.population import DOMAIN, ROUTER_PORT, Population
from tests.scale.worker import Plan, main

#: Reprovide period and refresh intervals of the field defaults (KademliaSettings).
REPROVIDE_INTERVAL = 15 * 60.0
REFRESH_INTERVAL = 10 * 60.0
#: How often a joined node re-bootstraps: the DNS refresh interval (DNSSettings).
REBOOTSTRAP_INTERVAL = 30 * 60.0
#: The nodes' own reprovide period and record lifetime in the simulation: longer than
#: any run. Two cores take minutes to announce what a cluster's nodes announce in
#: seconds, and on a busy machine a run stretched past 15 minutes saw the first
#: keys' reprovides (and, when those failed under the load, their records expire) in
#: the middle of its measurements, which a real rollout, over in a minute, never does.
#: The steady-state figure is computed with the field defaults above.
SIM_REPROVIDE_INTERVAL = 3 * 3600.0
SIM_PROVIDER_TTL = 4 * 3600.0
_DNS_BATCH = 0.05


class SimulationError(RuntimeError):
    """A phase did not finish in time or a worker died."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of ``nox -s scale``."""
    parser = argparse.ArgumentParser(prog="nox -s scale --", description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=100, help="Simulated nodes.")
    parser.add_argument("--json", type=Path, default=None, help="Write the figures here.")
    parser.add_argument("--churn", type=float, default=0.2,
                        help="Share of nodes killed at once before the last lookups (0: skip).")
    parser.add_argument("--join-rate", type=float, default=200.0, help="Nodes started per second.")
    parser.add_argument("--keys-per-node", type=int, default=50, help="Keys each node advertises.")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                        help="Worker processes (default: one per core).")
    parser.add_argument("--lookups", type=int, default=2000, help="Lookups per lookup phase.")
    parser.add_argument("--lookup-concurrency", type=int, default=1,
                        help="Lookups in flight per worker.")
    parser.add_argument("--advertise-concurrency", type=int, default=1,
                        help="Nodes advertising at once per worker.")
    parser.add_argument("--late-joiners", type=int, default=None,
                        help="Extra nodes joining one at a time after the others "
                             "(default: N/5, at most 20; 0: none).")
    parser.add_argument("--overload", type=float, default=0.0,
                        help="Drive reproviding at this multiple of the measured capacity.")
    parser.add_argument("--reprovide-concurrency", type=int, default=8,
                        help="kademlia_reprovide_concurrency of every node (field default 8).")
    parser.add_argument("--soak", type=float, default=5.0,
                        help="Seconds of overload before its lookups.")
    parser.add_argument("--progress", action="store_true",
                        help="Workers log progress and event-loop lag every 5 s.")
    parser.add_argument("--seed", type=int, default=1, help="Seed of ids, keys and choices.")
    parser.add_argument("--separate-advertise", action="store_true",
                        help="Announce keys in a phase after the join (not as nodes join).")
    parser.add_argument("--rollout-announce-rate", type=float, default=50.0,
                        help="Keys a second each worker announces while nodes join "
                             "(0: no limit; all at once after the last join).")
    parser.add_argument("--reannounce-growth", type=float, default=2.0,
                        help="kademlia_reannounce_growth of every node (0: off).")
    parser.add_argument("--fleet-lookup", action=argparse.BooleanOptionalAction, default=False,
                        help="In the fleet phase, each node looks the digest up before it "
                             "claims it, as the mirror does.")
    parser.add_argument("--max-seconds", type=float, default=900.0,
                        help="Give up (and stop everything) after this long.")
    args = parser.parse_args(argv)
    if args.nodes < 2 or args.workers < 1 or not 0 <= args.churn < 1 or args.join_rate <= 0:
        parser.error("need --nodes >= 2, --workers >= 1, 0 <= --churn < 1, --join-rate > 0")
    args.workers = min(args.workers, args.nodes)
    if args.late_joiners is None:
        args.late_joiners = min(20, max(1, args.nodes // 5))
    return args


def pick_base_octet(rng: random.Random) -> int:
    """A second octet ``B`` whose ``127.B.1.1:5001`` is free (others may run tests too)."""
    for _ in range(50):
        base = rng.randrange(32, 224)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((f"127.{base}.1.1", ROUTER_PORT))
            except OSError:
                continue
            return base
    raise SimulationError("no free 127.B.0.0/16 range for the nodes")


class Coordinator:
    """Runs the workers and the DNS server; :meth:`call` runs one phase on every worker."""

    def __init__(self, args: argparse.Namespace, population: Population,
                 dns: QuietDnsServer) -> None:
        self.args = args
        self.pop = population
        self.dns = dns
        self.deadline = time.monotonic() + args.max_seconds
        self.listed: set[int] = set()
        self._dirty = False
        self._published = 0.0
        self.hello: list[dict[str, Any]] = []
        context = multiprocessing.get_context("spawn")
        self.commands: list[Connection] = []
        self.events: list[Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        settings = {"kademlia_reprovide_interval": SIM_REPROVIDE_INTERVAL,
                    "kademlia_provider_ttl": SIM_PROVIDER_TTL,
                    "kademlia_reprovide_concurrency": args.reprovide_concurrency,
                    "kademlia_reannounce_growth": args.reannounce_growth}
        for index in range(args.workers):
            command_read, command_write = context.Pipe(duplex=False)
            event_read, event_write = context.Pipe(duplex=False)
            plan = Plan(index, args.workers, population, dns.nameserver, settings,
                        progress=args.progress)
            process = context.Process(target=main, args=(plan, command_read, event_write),
                                      name=f"scale-worker-{index}", daemon=True)
            process.start()
            command_read.close()
            event_write.close()
            self.commands.append(command_write)
            self.events.append(event_read)
            self.processes.append(process)
        self.hello = self._collect("hello", 60.0)

    # -- phases ----------------------------------------------------------------------------
    def call(self, name: str, args: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
        """Send ``name`` to every worker; their results, in worker order."""
        return self.call_each(name, [args] * len(self.commands), timeout)

    def call_each(self, name: str, args: list[dict[str, Any]], timeout: float
                  ) -> list[dict[str, Any]]:
        """Send ``name`` with ``args[i]`` to worker ``i``; their results, in worker order."""
        for connection, arguments in zip(self.commands, args, strict=True):
            connection.send((name, arguments))
        return self._collect(name, timeout)

    def _collect(self, name: str, timeout: float) -> list[dict[str, Any]]:
        limit = min(time.monotonic() + timeout, self.deadline)
        results: dict[int, dict[str, Any]] = {}
        while len(results) < len(self.events):
            now = time.monotonic()
            if now > limit:
                raise SimulationError(f"phase {name!r} did not finish in {timeout:.0f}s "
                                      f"(or --max-seconds ran out)")
            for connection in wait([c for i, c in enumerate(self.events) if i not in results],
                                   timeout=min(_DNS_BATCH, limit - now)):
                assert isinstance(connection, Connection)
                worker = self.events.index(connection)
                try:
                    message = connection.recv()
                except EOFError as exc:
                    raise SimulationError(f"worker {worker} died during {name!r}") from exc
                if message[0] == "up":
                    self.listed.add(message[1])
                    self._dirty = True
                elif message[0] == "hello" and name == "hello":
                    results[worker] = message[1]
                elif message[0] == "done" and message[1] == name:
                    results[worker] = message[2]
            self._publish()
        self._publish(force=True)
        return [results[i] for i in range(len(self.events))]

    def _publish(self, force: bool = False) -> None:
        """List the started nodes in DNS, in batches (a reload every 50 ms at most)."""
        now = time.monotonic()
        if self._dirty and (force or now - self._published >= _DNS_BATCH):
            self.dns.publish(DOMAIN, [self.pop.host(i) for i in sorted(self.listed)])
            self._dirty = False
            self._published = now

    def unlist(self, indices: list[int]) -> None:
        """Drop killed nodes from DNS, as the Service's endpoints would."""
        self.listed.difference_update(indices)
        self._dirty = True
        self._publish(force=True)

    def close(self) -> None:
        """Ask the workers to quit; stop those that do not."""
        try:
            if all(p.is_alive() for p in self.processes):
                self.call("quit", {}, 30.0)
        except (SimulationError, OSError) as exc:
            print(f"scale: workers did not quit cleanly: {exc}", file=sys.stderr)
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join(5)


def _merge(results: list[dict[str, Any]], key: str) -> dict[int, Any]:
    merged: dict[int, Any] = {}
    for result in results:
        merged.update(result[key])
    return merged


def _sum(results: list[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for result in results:
        for name, value in result.items():
            total[name] = total.get(name, 0) + value
    return total


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before.get(name, 0) for name in after}


def simulate(args: argparse.Namespace) -> dict[str, Any]:
    """Run the whole simulation; returns the figures (see :func:`report.summarise`)."""
    rng = random.Random(args.seed)
    population = Population(args.nodes, args.keys_per_node, args.seed, pick_base_octet(rng))
    raw: dict[str, Any] = {"args": {k: (str(v) if isinstance(v, Path) else v)
                                    for k, v in vars(args).items()},
                           "reprovide_interval_s": REPROVIDE_INTERVAL,
                           "refresh_interval_s": REFRESH_INTERVAL,
                           "rebootstrap_interval_s": REBOOTSTRAP_INTERVAL}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="spegel-scale-") as workdir:
        dns = QuietDnsServer(Path(workdir), domain="sim.local")
        dns.start()
        try:
            _phases(args, rng, population, dns, raw)
        finally:
            dns.stop()
    raw["wall_seconds"] = time.monotonic() - started
    figures = report.summarise(raw, args)
    figures.update(raw.get("fleet", {}))
    return figures


def _phases(args: argparse.Namespace, rng: random.Random, population: Population,
            dns: QuietDnsServer, raw: dict[str, Any]) -> None:
    """Run the phases on fresh workers, filling ``raw``; the workers are always stopped."""
    coordinator = Coordinator(args, population, dns)
    try:
        raw["baseline_rss_mb"] = sum(h["rss_mb"] for h in coordinator.hello)
        before = _sum(coordinator.call("counters", {}, 30.0))
        join_time = args.nodes / args.join_rate
        limit = 1.5 * join_time + 30.0
        rollout = not args.separate_advertise
        joined = coordinator.call("join", {"t0": time.monotonic() + 0.5, "rate": args.join_rate,
                                           "limit": limit,
                                           "announce": args.advertise_concurrency * rollout,
                                           "announce_rate": args.rollout_announce_rate},
                                  2 * limit + 60.0)
        raw["ready"] = _merge(joined, "ready")
        raw["joined"] = _merge(joined, "joined")
        raw["ready_phases"] = _merge(joined, "phases")
        raw["start_lag_s"] = max(r["start_lag_s"] for r in joined)
        raw["join_cpu_s"] = sum(r.get("cpu_s", 0.0) for r in joined)
        started = sorted(i for r in joined for i in r["started"])
        raw["started"] = len(started)
        after_join = _sum(coordinator.call("counters", {}, 30.0))
        raw["join_counters"] = _delta(after_join, before)
        if rollout:
            _rollout(coordinator, args, raw, started, before)
            after_join = _sum(coordinator.call("counters", {}, 30.0))
        raw["late_ready"] = _merge(_late_join(coordinator, args), "ready")
        after_late = _sum(coordinator.call("counters", {}, 30.0))
        raw["late_counters"] = _delta(after_late, after_join)
        after_join = after_late
        if not rollout:
            limit = _advertise_limit(args)
            advertised = coordinator.call(
                "advertise", {"concurrency": args.advertise_concurrency, "limit": limit},
                limit + 60.0)
            raw["advertise_seconds"] = max(r["seconds"] for r in advertised)
            raw["advertise_unfinished"] = sum(r["unfinished"] for r in advertised)
            after_advertise = _sum(coordinator.call("counters", {}, 30.0))
            raw["advertise_counters"] = _delta(after_advertise, after_join)
        raw["settled_counters"] = _sum(coordinator.call("counters", {}, 30.0))
        settled_at = time.monotonic()
        raw["probes"] = _probes(coordinator)
        raw["state"] = coordinator.call("state", {}, 30.0)
        alive = started
        raw["lookups"] = _lookups(coordinator, args, alive)
        raw["before_churn_counters"] = _sum(coordinator.call("counters", {}, 30.0))
        raw["settled_seconds"] = time.monotonic() - settled_at
        raw["fleet"] = _fleet(coordinator, len(alive), lookup=args.fleet_lookup)
        if args.overload > 0:
            raw["overload"] = _overload(coordinator, args, raw, alive)
        if args.churn > 0:
            victims = sorted(rng.sample(alive, int(len(alive) * args.churn)))
            coordinator.call("kill", {"indices": victims}, 60.0)
            coordinator.unlist(victims)
            alive = sorted(set(alive) - set(victims))
            raw["killed"] = len(victims)
            raw["lookups_after_churn"] = _lookups(coordinator, args, alive)
        raw["counters"] = _sum(coordinator.call("counters", {}, 30.0))
        raw["dns_questions"] = dns.questions_answered()
    finally:
        coordinator.close()


def _fleet(coordinator: Coordinator, nodes: int, *, lookup: bool) -> dict[str, Any]:
    """Every node claims one new digest within a second (:mod:`tests.scale.fleet`)."""
    results = coordinator.call("fleet", {"t0": time.monotonic() + fleet.LEAD, "spread": 1.0,
                                         "fanout": fleet.FANOUT, "lookup": lookup}, 120.0)
    return fleet.summarise(results, nodes)


def _advertise_limit(args: argparse.Namespace) -> float:
    """How long announcing may take: 50 keys a second and a minute (--max-seconds
    bounds the whole run); a busy machine announces ~100-300 keys a second."""
    return min(args.max_seconds, 60.0 + args.nodes * args.keys_per_node / 50)


def _rollout(coordinator: Coordinator, args: argparse.Namespace, raw: dict[str, Any],
             started: list[int], before: dict[str, int]) -> None:
    """Wait for the announcements the nodes started as they joined, then look up keys
    that one node holds: of any node, and of the first 5 % of joiners."""
    limit = _advertise_limit(args)
    announced = coordinator.call("announced", {"limit": limit}, limit + 60.0)
    raw["advertise_seconds"] = max(r["seconds"] for r in announced)
    raw["advertise_unfinished"] = sum(r["unfinished"] for r in announced)
    after = _sum(coordinator.call("counters", {}, 30.0))
    raw["advertise_counters"] = _delta(after, before)  # the whole rollout: joins too
    early = started[:max(1, math.ceil(0.05 * args.nodes))]
    raw["rollout_lookups"] = _lookups(coordinator, args, started, holders=started)
    raw["rollout_lookups_early"] = _lookups(coordinator, args, started, holders=early)


def _late_join(coordinator: Coordinator, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Nodes N, N+1, ... joining one at a time per worker, after the bulk join."""
    extra = range(args.nodes, args.nodes + max(0, args.late_joiners))
    return coordinator.call_each(
        "late_join", [{"indices": [i for i in extra if i % args.workers == worker],
                       "gap": 0.2, "limit": 120.0} for worker in range(args.workers)], 150.0)


def _probes(coordinator: Coordinator, count: int = 20, idle: float = 5.0) -> dict[str, Any]:
    """Datagrams per isolated provide and per FIND_NODE (all workers, one at a time each).

    Each probe counts the requests its node sent and the answers it got (traced);
    every node's counters over the same time are kept too, but they also hold the
    nodes' own work meanwhile (bucket refreshes come due spread over the refresh
    interval after joining), whose rate an ``idle`` window just before measures.
    """
    started = time.monotonic()
    before = _sum(coordinator.call("counters", {}, 30.0))
    time.sleep(idle)
    after = _sum(coordinator.call("counters", {}, 30.0))
    seconds = time.monotonic() - started
    background = _delta(after, before)["datagrams_sent"] / seconds
    out: dict[str, Any] = {"background_datagrams_per_s": background, "idle_seconds": seconds}
    for kind in ("provide", "find_node"):
        started = time.monotonic()
        before = _sum(coordinator.call("counters", {}, 30.0))
        results = coordinator.call("probe", {"kind": kind, "count": count}, 120.0)
        after = _sum(coordinator.call("counters", {}, 30.0))
        elapsed = time.monotonic() - started
        done = sum(r["count"] for r in results)
        out[kind] = {"count": done, "counters": _delta(after, before), "seconds": elapsed,
                     "queries": sum(r["queries"] for r in results),
                     "answered": sum(r["answered"] for r in results)}
        out["stale_buckets"] = sum(r["stale_buckets"] for r in results) / len(results)
    return out


def _lookups(coordinator: Coordinator, args: argparse.Namespace, alive: list[int],
             holders: list[int] | None = None) -> list[tuple[bool, float, int | None, int]]:
    per_worker = max(1, args.lookups // args.workers)
    results = coordinator.call("lookups", {"count": per_worker, "alive": alive,
                                           "concurrency": args.lookup_concurrency,
                                           "budget": 1.0, "limit": 120.0,
                                           "holders": holders}, 150.0)
    out: list[tuple[bool, float, int | None, int]] = []
    for result in results:
        out += [(bool(r[0]), float(r[1]), r[2], int(r[3])) for r in result["results"]]
        out += [(False, 1.0, None, 0)] * result["unfinished"]
    return out


def _overload(coordinator: Coordinator, args: argparse.Namespace, raw: dict[str, Any],
              alive: list[int]) -> dict[str, Any]:
    """Reprovide at ``--overload`` times the measured capacity; lookups meanwhile."""
    keys = args.nodes * args.keys_per_node
    capacity = keys / max(raw["advertise_seconds"], 1e-3)  # keys announced per second
    interval = keys / (args.overload * capacity)
    before = _sum(coordinator.call("counters", {}, 30.0))
    coordinator.call("reprovide_every", {"interval": interval}, 60.0)
    soak_started = time.monotonic()
    time.sleep(args.soak)
    lookups = _lookups(coordinator, args, alive)
    seconds = time.monotonic() - soak_started
    after = _sum(coordinator.call("counters", {}, 30.0))
    coordinator.call("reprovide_every", {"interval": SIM_REPROVIDE_INTERVAL}, 60.0)
    return {"factor": args.overload, "capacity_keys_per_s": capacity,
            "interval_s": interval, "demand_keys_per_s": keys / interval,
            "seconds": seconds, "counters": _delta(after, before), "lookups": lookups}


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(f"scale: stopped by signal {signum}")


def main_cli(argv: list[str] | None = None) -> int:
    """Run, print the table, write the JSON; exit status 0 even when a goal is missed."""
    args = parse_args(argv)
    # SIGTERM unwinds like an exception, so that the workers and dnsmasq are stopped.
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        figures = simulate(args)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(report.table(figures))
    print(fleet.line(figures))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main_cli())
