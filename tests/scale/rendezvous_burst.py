"""One rendezvous with a core of its own, answering a fleet's claims within a second.

``python -m tests.scale.rendezvous_burst --claims 2000``: a real
:class:`~spegel_kademlia.KademliaRouter` (uvloop when installed, no cluster key, so
address validation is on as in ``nox -s scale``) runs alone in a process; this process
sends ``--claims`` CLAIM datagrams of one digest, each from its own loopback address at
a random instant of ``--spread`` seconds, and times each answer. The figures: the claim
round trip (p50 / p99 / max) and the rendezvous' CPU per claim, which is what a node of
a real cluster pays when a fleet claims at it. Where ``nox -s scale`` packs 1000 nodes
into each process, their claims, redirects and answers share one event loop; here the
rendezvous has its loop to itself, as in a cluster (the claimants share this one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import random
import time
from multiprocessing.connection import Connection
from typing import Any

from spegel_kademlia import KademliaRouter
from spegel_kademlia.codec import Codec
from spegel_kademlia.ids import key_id
from spegel_kademlia.messages import Claim, ClaimReply, Message
from tests.scale.fleet import DIGEST, FANOUT

_HOST = "127.78.0.1"
_PORT = 5001


def _run_loop(main: Any) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _rendezvous(pipe: Connection) -> None:
    """The rendezvous process: serve until told to stop; report its CPU time."""

    async def main() -> None:
        router = KademliaRouter(host=_HOST, port=_PORT, mirror_port=5000)
        await router.start()
        pipe.send(("ready", router.node_id))
        await asyncio.to_thread(pipe.recv)  # "measure"
        cpu = time.process_time()
        pipe.send(("measuring", None))
        await asyncio.to_thread(pipe.recv)  # "stop"
        pipe.send(("cpu", time.process_time() - cpu))
        await router.aclose()

    _run_loop(main())


class _Claimant(asyncio.DatagramProtocol):
    def __init__(self, answered: asyncio.Future[float]) -> None:
        self.answered = answered
        self.codec = Codec()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        message = self.codec.decode(data, addr)
        if isinstance(message.body, ClaimReply) and not self.answered.done():
            self.answered.set_result(time.perf_counter())


async def _claims(count: int, spread: float, seed: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    codec = Codec()
    kid = key_id(DIGEST)
    endpoints = []
    for n in range(count):
        answered: asyncio.Future[float] = loop.create_future()
        host = f"127.79.{n // 250}.{n % 250 + 2}"
        transport, _ = await loop.create_datagram_endpoint(
            lambda a=answered: _Claimant(a), local_addr=(host, 0))
        endpoints.append((transport, answered, rng.randbytes(32)))
    t0 = loop.time() + 0.2

    async def one(transport: asyncio.DatagramTransport, answered: asyncio.Future[float],
                  node_id: bytes) -> float | None:
        await asyncio.sleep(max(0.0, t0 + rng.uniform(0, spread) - loop.time()))
        data = codec.encode(Message(Claim(kid, FANOUT, 60_000), rng.getrandbits(64),
                                    node_id, 5000))
        started = time.perf_counter()
        transport.sendto(data, (_HOST, _PORT))
        try:
            return 1000 * (await asyncio.wait_for(answered, 5.0) - started)
        except TimeoutError:
            return None

    rtts = await asyncio.gather(*(one(*e) for e in endpoints))
    for transport, _, _ in endpoints:
        transport.close()
    done = sorted(r for r in rtts if r is not None)
    p99 = done[max(0, math.ceil(0.99 * len(done)) - 1)] if done else None
    return {"claims": count, "answered": len(done),
            "claim_p50_ms": round(done[len(done) // 2], 2) if done else None,
            "claim_p99_ms": round(p99, 2) if p99 is not None else None,
            "claim_max_ms": round(done[-1], 2) if done else None}


def main() -> None:
    """Run the burst once and print its figures (JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--claims", type=int, default=2000)
    parser.add_argument("--spread", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=_rendezvous, args=(theirs,), daemon=True)
    process.start()
    try:
        if not ours.poll(30):
            raise SystemExit("the rendezvous did not start")
        ours.recv()
        ours.send("measure")
        ours.recv()
        figures: dict[str, Any] = {}

        async def measured() -> None:
            figures.update(await _claims(args.claims, args.spread, args.seed))

        _run_loop(measured())
        ours.send("stop")
        if not ours.poll(30):
            raise SystemExit("the rendezvous did not report")
        _, cpu = ours.recv()
        figures["rendezvous_cpu_s"] = round(cpu, 3)
        figures["rendezvous_cpu_per_claim_us"] = round(1e6 * cpu / max(1, args.claims), 1)
        print(json.dumps(figures))
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()


if __name__ == "__main__":
    main()
