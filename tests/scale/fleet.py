"""The fleet phase of ``nox -s scale``: every node claims one new digest within a second.

Each worker has each of its live nodes claim the same digest at a random instant of
the same second, as kubelets do when a new image rolls out. Arriving providers join
the tree as their claims are answered (no data moves: the tree is the claims). The
coordinator merges the answers into the figures:

- ``fleet_upstream_grants``: nodes told go (upstream fetches); goal <= 2;
- ``fleet_max_children``: most nodes told to stream from one parent; goal <=
  ``fleet_fanout`` (also reported);
- ``fleet_tree_depth_max``: deepest node; goal <= ceil(log_F N) + 2;
- ``fleet_claim_p99_ms``: claim round trip (finding the rendezvous and its answer);
  goal <= 50 ms; ``fleet_claims_unanswered``: claims no rendezvous answered;
  ``fleet_claim_hops_mean``: nodes a claim visited;
- with ``lookup=True`` (``--fleet-lookup``), each node first looks the digest's
  providers up, as the mirror does before it claims (it finds none: the image is new),
  and its claim then goes to the closest nodes that lookup heard from;
  ``fleet_lookup_p99_ms`` and ``fleet_miss_p99_ms`` (lookup and claim: a mirror's miss
  until it knows what to do) report it;
- ``fleet_start_lag_s``: how late the last worker started the phase (0: every claim
  went at its instant).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from spegel_core.protocols import ClaimAnswer, Router, SingleFlightRouter

FANOUT = 4
DIGEST = "sha256:" + "f1ee7" * 12 + "0000"
#: The claims' TTL: long enough that no claim expires during the phase.
TTL = 60.0
#: How long a claim may take here. The mirror gives a claim 1 s (then it answers 404);
#: here hundreds of nodes share a core, so a claim is given longer and its round trip
#: is what the figures report.
CLAIM_TIMEOUT = 5.0
#: Seconds between the coordinator's command and the claims' second. Each worker
#: collects garbage before a phase (a full collection of 1000 nodes' heap took ~1 s at
#: 2000 nodes and 5 keys each); with 0.5 s the claims of the first half second were all
#: released at once when the workers came out of it (``fleet_start_lag_s``).
LEAD = 3.0


class FleetRouter(SingleFlightRouter, Router, Protocol):
    """A router that looks up and claims (the simulation's nodes)."""


async def claim_all(routers: Mapping[int, FleetRouter], *, t0: float, spread: float,
                    fanout: int, digest: str, rng: random.Random, lookup: bool = False,
                    timeout: float = CLAIM_TIMEOUT) -> dict[str, Any]:  # noqa: ASYNC109
    """Every router claims ``digest`` at ``t0 + uniform(0, spread)``; the answers.

    With ``lookup``, each looks the digest's providers up first, as the mirror does.
    """

    async def one(index: int, router: FleetRouter) -> dict[str, Any]:
        delay = t0 + rng.uniform(0.0, spread) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        began = time.perf_counter()
        if lookup:
            found = [peer async for peer in router.lookup(digest, 1, timeout)]
            assert not found, f"{digest} has a provider in the fleet phase: {found}"
        started = time.perf_counter()
        hops = _hops(router)
        answer: ClaimAnswer | None = await router.claim(digest, fanout, TTL, timeout)
        now = time.perf_counter()
        figures = {"index": index, "rtt_ms": 1000 * (now - started), "looked": lookup,
                   "lookup_ms": 1000 * (started - began), "miss_ms": 1000 * (now - began),
                   "hops": _hops(router) - hops}
        if answer is None:
            return {**figures, "ok": False}
        parent = None if answer.parent is None else f"{answer.parent.node_id.hex()}"
        return {**figures, "ok": True, "go": answer.go, "depth": answer.depth,
                "parent": parent}

    late = max(0.0, time.monotonic() - t0)  # this worker started after the claims' second
    results = await asyncio.gather(*(one(i, r) for i, r in routers.items()))
    return {"claims": list(results), "start_lag_s": late}


def _hops(router: Router) -> int:
    hops = router.status().extra.get("claim_hops", 0)
    return hops if isinstance(hops, int) else 0


def summarise(results: list[dict[str, Any]], nodes: int, fanout: int = FANOUT
              ) -> dict[str, Any]:
    """The fleet figures from every worker's :func:`claim_all` answers."""
    claims = [c for result in results for c in result["claims"]]
    answered = [c for c in claims if c["ok"]]
    children = Counter(c["parent"] for c in answered if c.get("parent"))
    rtts = sorted(c["rtt_ms"] for c in claims)
    p99 = rtts[max(0, math.ceil(0.99 * len(rtts)) - 1)] if rtts else None
    looked = [c for c in claims if c.get("looked")]
    extra: dict[str, Any] = {}
    if looked:
        extra = {"fleet_lookup_p99_ms": _p99(c["lookup_ms"] for c in looked),
                 "fleet_miss_p99_ms": _p99(c["miss_ms"] for c in looked)}
    return {**extra,
        "fleet_lookup_first": bool(looked),
        "fleet_claim_hops_mean": round(sum(c.get("hops", 0) for c in claims)
                                       / max(1, len(claims)), 2),
        "fleet_nodes": len(claims),
        "fleet_fanout": fanout,
        "fleet_upstream_grants": sum(1 for c in answered if c["go"]),
        "fleet_claims_unanswered": len(claims) - len(answered),
        "fleet_max_children": max(children.values(), default=0),
        "fleet_tree_depth_max": max((c["depth"] for c in answered), default=0),
        "fleet_tree_depth_goal": math.ceil(math.log(max(2, len(claims)), max(2, fanout))) + 2,
        "fleet_claim_p50_ms": round(rtts[len(rtts) // 2], 2) if rtts else None,
        "fleet_claim_p99_ms": round(p99, 2) if p99 is not None else None,
        "fleet_start_lag_s": round(max((r.get("start_lag_s", 0.0) for r in results),
                                       default=0.0), 3),
    }


def _p99(values: Iterable[float]) -> float:
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)], 2)


def line(figures: Mapping[str, Any]) -> str:
    """The fleet phase in one printed line."""
    if "fleet_nodes" not in figures:
        return "fleet phase: not run"
    return (f"fleet phase: {figures['fleet_nodes']} claims within 1 s, "
            f"{figures['fleet_upstream_grants']} told go (goal <= 2), "
            f"most children {figures['fleet_max_children']} (fan-out "
            f"{figures['fleet_fanout']}), depth {figures['fleet_tree_depth_max']} (goal <= "
            f"{figures['fleet_tree_depth_goal']}), claim p99 {figures['fleet_claim_p99_ms']} ms "
            f"(goal <= 50), hops {figures.get('fleet_claim_hops_mean')}, "
            f"unanswered {figures['fleet_claims_unanswered']}"
            + (f", lookup first: lookup p99 {figures['fleet_lookup_p99_ms']} ms, miss to "
               f"answer p99 {figures['fleet_miss_p99_ms']} ms"
               if figures.get("fleet_lookup_first") else ""))
