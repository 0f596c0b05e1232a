"""What one join costs in CPU, measured in one process on a quiet network.

``python -m tests.scale.joincost [--base N] [--joins J] [--dns]`` (or ``nox -s scale --
joincost ...``) starts ``--base`` real :class:`~tests.scale.simrouter.SimRouter` nodes
on loopback UDP (127.B.x.y, port 5001 each), one event loop (uvloop) and the garbage
collector set as in a simulation worker, then joins ``--joins`` more, one at a time,
each waiting for the previous one to be ready. Every node lives in this process, so
the process's CPU time over the joins is the whole cost of a join: the joiner's and
that of every node answering it. The base nodes bootstrap from five nodes picked at
random; with ``--dns`` the joiners resolve a real dnsmasq (127.0.0.1) that lists the
base nodes, as in ``nox -s scale``.

This is the figure the simulation's ready time at 200 joins/s depends on (two cores
must carry ``200 x`` this per second); unlike the simulation it has no second process,
no DNS server sharing the cores and no queueing, so it is steady from run to run and
quick (a few seconds) for comparing two versions of the code. It prints the CPU per
join, the datagrams a join sent (all nodes' requests and answers) and the CPU per
datagram. ``--profile`` prints where the time went (cProfile, which slows everything
about two times, so compare shares, not times).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import logging
import pstats
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from spegel_core.protocols import Discovery, PeerAddress
from spegel_core.testing.fakes import StaticListDiscovery
from spegel_dns import DNSDiscovery, LocalAddresses
from spegel_kademlia import KademliaSettings
from tests.scale.dns import QuietDnsServer
from tests.scale.population import DOMAIN, ROUTER_PORT, host_of
from tests.scale.simrouter import SimRouter

#: 127.60.x.y: away from the simulation's 127.B (B from 20) and the tests' 127.0-5.
_BASE_OCTET = 60
_SEEDS = 5
_READY_LIMIT = 5.0


@dataclass
class JoinCost:
    """The figures of one run."""

    base: int
    joins: int
    dns: bool
    cpu_ms_per_join: float
    datagrams_per_join: float
    cpu_us_per_datagram: float
    ready_p50_ms: float

    def __str__(self) -> str:
        source = "dns (dnsmasq)" if self.dns else "5 static seeds"
        return (f"{self.joins} joins into {self.base} nodes, bootstrap from {source}: "
                f"CPU per join {self.cpu_ms_per_join:.2f} ms, "
                f"{self.datagrams_per_join:.1f} datagrams per join, "
                f"{self.cpu_us_per_datagram:.0f} us CPU per datagram, "
                f"ready p50 {self.ready_p50_ms:.1f} ms")


async def measure(base: int, joins: int, *, dns: QuietDnsServer | None = None,
                  profile: cProfile.Profile | None = None, seed: int = 1) -> JoinCost:
    """Start ``base`` nodes, then time ``joins`` more joining one at a time."""
    rng = random.Random(seed)
    settings = KademliaSettings()
    started: list[PeerAddress] = []
    routers: list[SimRouter] = []

    def seeds() -> StaticListDiscovery:
        """Five random addresses of the nodes started so far."""
        return StaticListDiscovery(rng.sample(started, min(_SEEDS, len(started))))

    async def start(index: int, discovery: Discovery) -> SimRouter:
        host = host_of(index, _BASE_OCTET)
        router = SimRouter(host=host, port=ROUTER_PORT, mirror_port=5000,
                           discovery=[discovery], settings=settings,
                           node_id=random.Random(f"{seed}/{index}").randbytes(32),
                           rng=random.Random(f"{seed}/router/{index}"))
        routers.append(router)
        await router.start()
        started.append(PeerAddress(host, ROUTER_PORT))
        if index:
            async with asyncio.timeout(_READY_LIMIT):
                await router.ready.wait()
        return router

    try:
        for index in range(base):
            await start(index, seeds())
        if dns is not None:
            dns.publish(DOMAIN, [address.host for address in started])
        await asyncio.sleep(0.5)  # answers and late queries of the last base node
        sent = _sent(routers)
        cpu = time.process_time()
        if profile is not None:
            profile.enable()
        ready: list[float] = []
        for index in range(base, base + joins):
            if dns is None:
                discovery: Discovery = seeds()
            else:
                discovery = DNSDiscovery(DOMAIN, port=ROUTER_PORT, nameservers=[dns.nameserver],
                                         own=LocalAddresses([host_of(index, _BASE_OCTET)]),
                                         rng=random.Random(f"{seed}/dns/{index}"))
            router = await start(index, discovery)
            assert router.ready_at is not None and router.started_at is not None
            ready.append(router.ready_at - router.started_at)
        await asyncio.sleep(0.2)  # the last answers
        if profile is not None:
            profile.disable()
        cpu = time.process_time() - cpu
        sent = _sent(routers) - sent
    finally:
        await asyncio.gather(*(r.aclose() for r in routers))
    return JoinCost(base, joins, dns is not None, 1000 * cpu / joins, sent / joins,
                    1e6 * cpu / max(1, sent), 1000 * statistics.median(ready))


def _sent(routers: list[SimRouter]) -> int:
    """Datagrams the routers sent, all together."""
    total = 0
    for router in routers:
        value = router.status().extra.get("datagrams_sent", 0)
        total += value if isinstance(value, int) else 0
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.scale.joincost",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=int, default=1000, help="Nodes already there.")
    parser.add_argument("--joins", type=int, default=300, help="Nodes joining, one at a time.")
    parser.add_argument("--dns", action="store_true",
                        help="Joiners resolve a real dnsmasq, as in the simulation.")
    parser.add_argument("--profile", action="store_true",
                        help="Print the 30 costliest functions of the joins (cProfile).")
    args = parser.parse_args(argv)
    if args.base < 1 or args.joins < 1:
        parser.error("--base and --joins must be at least 1")
    logging.disable(logging.CRITICAL)  # every node warns that the DHT runs without a key
    # As in a simulation worker (tests/scale/worker.py): hundreds of nodes in one heap.
    gc.freeze()
    gc.set_threshold(10_000, 1_000_000, 1_000_000)
    profile = cProfile.Profile() if args.profile else None
    try:
        import uvloop
        run = uvloop.run
    except ImportError:
        run = asyncio.run
    with tempfile.TemporaryDirectory(prefix="spegel-joincost-") as workdir:
        dns = QuietDnsServer(Path(workdir)) if args.dns else None
        if dns is not None:
            dns.start()
        try:
            print(run(measure(args.base, args.joins, dns=dns, profile=profile)), flush=True)
        finally:
            if dns is not None:
                dns.stop()
    if profile is not None:
        pstats.Stats(profile).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
