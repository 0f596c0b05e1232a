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
- ``fleet_start_lag_s``: how late the last worker started the phase (0: every claim
  went at its instant).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from spegel_core.protocols import ClaimAnswer, SingleFlightRouter

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


async def claim_all(routers: Mapping[int, SingleFlightRouter], *, t0: float, spread: float,
                    fanout: int, digest: str, rng: random.Random,
                    timeout: float = CLAIM_TIMEOUT) -> dict[str, Any]:  # noqa: ASYNC109
    """Every router claims ``digest`` at ``t0 + uniform(0, spread)``; the answers."""

    async def one(index: int, router: SingleFlightRouter) -> dict[str, Any]:
        delay = t0 + rng.uniform(0.0, spread) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        started = time.perf_counter()
        answer: ClaimAnswer | None = await router.claim(digest, fanout, TTL, timeout)
        rtt_ms = 1000 * (time.perf_counter() - started)
        if answer is None:
            return {"index": index, "ok": False, "rtt_ms": rtt_ms}
        parent = None if answer.parent is None else f"{answer.parent.node_id.hex()}"
        return {"index": index, "ok": True, "go": answer.go, "depth": answer.depth,
                "parent": parent, "rtt_ms": rtt_ms}

    late = max(0.0, time.monotonic() - t0)  # this worker started after the claims' second
    results = await asyncio.gather(*(one(i, r) for i, r in routers.items()))
    return {"claims": list(results), "start_lag_s": late}


def summarise(results: list[dict[str, Any]], nodes: int, fanout: int = FANOUT
              ) -> dict[str, Any]:
    """The fleet figures from every worker's :func:`claim_all` answers."""
    claims = [c for result in results for c in result["claims"]]
    answered = [c for c in claims if c["ok"]]
    children = Counter(c["parent"] for c in answered if c.get("parent"))
    rtts = sorted(c["rtt_ms"] for c in claims)
    p99 = rtts[max(0, math.ceil(0.99 * len(rtts)) - 1)] if rtts else None
    return {
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


def line(figures: Mapping[str, Any]) -> str:
    """The fleet phase in one printed line."""
    if "fleet_nodes" not in figures:
        return "fleet phase: not run"
    return (f"fleet phase: {figures['fleet_nodes']} claims within 1 s, "
            f"{figures['fleet_upstream_grants']} told go (goal <= 2), "
            f"most children {figures['fleet_max_children']} (fan-out "
            f"{figures['fleet_fanout']}), depth {figures['fleet_tree_depth_max']} (goal <= "
            f"{figures['fleet_tree_depth_goal']}), claim p99 {figures['fleet_claim_p99_ms']} ms "
            f"(goal <= 50), unanswered {figures['fleet_claims_unanswered']}")
