"""Figures of a simulation run: how each is derived, the goals, the printed table.

Definitions (also in ``docs/scale.md``):

- ``ready_*_s``: from a node's ``router.start()`` to the end of its first
  self-lookup with a non-empty routing table (see :mod:`tests.scale.simrouter`);
  ``ready_{dns,ping,self_lookup}_*_ms`` split it: DNS (start to the first seed
  asked), the seeds' answers (to the start of the rest of the self lookup), the
  rest of the self lookup; ``cpu_ms_per_join``: CPU time of the worker processes
  during the join phase over the nodes joined;
  for the N nodes joining at ``--join-rate``. Node 0 is left out: when it starts
  nobody else exists, so it waits for node 1. ``late_ready_*_s``: the same for
  ``--late-joiners`` more nodes, joining one at a time once the N are in: the
  protocol's ready time, without a queue of joins sharing this machine's CPU.
- ``lookup_*``: a lookup as the mirror does it (3 providers, 1 s budget) from a
  random live node, of a random key of another random live node; it succeeds when
  a live holder of the key is yielded, and its time is until then. Percentiles are
  over the successful lookups (nearest rank); failures are in the ratio.
- ``hops``: hop of the first answer naming a provider (0: the node held a record).
- ``rollout_lookup_success_ratio``: the same lookups, of keys that one node holds
  (announced as that node joined, during the rollout), from random nodes, right after
  the last of those first announcements (no reprovide has run);
  ``rollout_lookup_success_ratio_early``: the same for keys of the first 5 % of the
  nodes to join. ``reannounced_keys``: keys announced again during the rollout because
  the network had doubled since (``--reannounce-growth``, see ``replicate.py``);
  ``reannounce_datagrams_per_join``: those times ``datagrams_per_key_advertised``,
  over the nodes; ``reannounced_keys_settled``: the same count from the end of the
  rollout to the churn (a network of constant size: the steady-state cost, 0 expected),
  and ``msgs_per_node_per_s_reannounce_settled`` it in datagrams per node per second.
- ``dns_queries_per_node``: DNS resolutions (``DNSDiscovery.bootstrap_peers``
  calls: an A and an AAAA question each) per node started (late joiners too);
  ``dns_questions_per_node`` counts every question dnsmasq answered (its ``SIGUSR1`` statistics:
  A and AAAA, over UDP and the TCP retries of truncated answers);
  ``dns_resolution_*_ms``: how long each resolution took (``DnsQuery`` events).
- ``msgs_per_node_per_s``: steady state with 50 keys per node (whatever
  ``--keys-per-node``) and the field defaults, derived from costs measured on an idle
  network (the "probe" step: provides of fresh keys and FIND_NODEs of random ids, one
  at a time per worker, every datagram every node sent counted, answers included)::

      50 * datagrams_per_key_advertised / 900 s                       (reprovide)
      + (10 + (1 + B) * datagrams_per_find_node) / 1800 s             (re-bootstrap)
      + B * datagrams_per_find_node / 600 s                           (bucket refresh)

  where B (``buckets_refreshed``) is the mean number of buckets from a node's
  closest contact outwards, as an upper bound all refreshed at each re-bootstrap
  (DNS refresh, 30 min: 5 seeds asked, a self-lookup, the stale buckets refreshed)
  and every 10 minutes (lookups keep most buckets fresh in practice). Lookups caused
  by pulls come on top (``queries_per_lookup`` requests and as many answers each). The bulk figures
  (``*_bulk``) are the same costs measured in the saturated join and advertise
  phases, where late answers trigger hedged queries. ``eviction_ping_share``: the
  share of the probes' datagrams that were PING/PONG: in the probe window those are
  only the checks a node makes before it would evict a bucket's oldest contact.
  A probe's datagrams are its node's requests and the answers they got (traced),
  not every node's counters, which also hold the nodes' own bucket refreshes (due
  spread over the first 10 minutes after joining). ``msgs_per_node_per_s_idle_measured``
  is every node's datagrams in a 5 s idle window just before the probes, per node;
  not a steady-state figure: the nodes started within seconds of each other, so
  their maintenance loops (every 60 s) wake in step and a 5 s window often sees none.
- ``rss_mb_per_node``: the workers' RSS after the advertise phase, less their RSS
  before the first node, over the nodes.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

#: Goals of issue 5 at 1000 nodes (and up to 1000); ``max`` or ``min`` bound.
GOALS_1000: dict[str, tuple[str, float]] = {
    "ready_p99_s": ("max", 0.100),
    "lookup_success_ratio": ("min", 0.999),
    "lookup_p99_ms": ("max", 20.0),
    "hops_p99": ("max", 3),
    "routing_table_max": ("max", 200),
    "dns_queries_per_node": ("max", 3),
    "lookup_success_ratio_after_churn": ("min", 0.999),
    "lookup_p99_ms_after_churn": ("max", 250.0),
    "msgs_per_node_per_s": ("max", 10.0),
    "rollout_lookup_success_ratio": ("min", 0.999),
    "rollout_lookup_success_ratio_early": ("min", 0.999),
}
#: At 2000 nodes and more, some bounds are looser.
GOALS_2000 = {**GOALS_1000, "ready_p99_s": ("max", 0.200), "lookup_p99_ms": ("max", 30.0),
              "hops_p99": ("max", 4)}

Lookup = Sequence[Any]  # (ok, seconds, hops, queries)

#: Keys per node the steady-state message rate is given for (issue 5).
STEADY_KEYS = 50
#: Datagrams of the pings of a re-bootstrap (5 DNS samples, a request and an answer each).
_BOOTSTRAP_PINGS = 10


def percentile(values: Sequence[float], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile of ``values`` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def goals_for(nodes: int) -> dict[str, tuple[str, float]]:
    """The goals that apply at ``nodes`` nodes."""
    return GOALS_2000 if nodes >= 2000 else GOALS_1000


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _ping_share(probes: dict[str, Any]) -> float | None:
    """Share of the probes' datagrams that were PING/PONG (ping-before-evict checks)."""
    sent = pings = 0
    for kind in ("provide", "find_node"):
        counters = probes[kind]["counters"]
        sent += counters["datagrams_sent"]
        pings += counters.get("sent_ping", 0) + counters.get("sent_pong", 0)
    return _round(pings / sent, 3) if sent else None


def _per(probe: dict[str, Any]) -> float:
    """Datagrams per probe: the node's traced requests and the answers they got."""
    if not probe["count"]:
        return 0.0
    if "answered" in probe:
        return float(probe["queries"] + probe["answered"]) / float(probe["count"])
    return float(probe["counters"]["datagrams_sent"]) / float(probe["count"])


def lookup_figures(results: Sequence[Lookup], suffix: str = "") -> dict[str, Any]:
    """Success ratio, latency and hop percentiles of a lookup phase."""
    good = [r for r in results if r[0]]
    seconds = [r[1] for r in good]
    hops = [r[2] for r in good if r[2] is not None]
    queries = [r[3] for r in results]
    return {
        f"lookups{suffix}": len(results),
        f"lookup_success_ratio{suffix}": _round(len(good) / len(results)) if results else None,
        f"lookup_p50_ms{suffix}": _ms(percentile(seconds, 50)),
        f"lookup_p99_ms{suffix}": _ms(percentile(seconds, 99)),
        f"hops_p50{suffix}": percentile(hops, 50),
        f"hops_p99{suffix}": percentile(hops, 99),
        f"queries_per_lookup{suffix}": _round(sum(queries) / len(queries), 2) if queries else None,
    }


def summarise(raw: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The JSON figures of a run from the raw phase results."""
    nodes, keys = args.nodes, args.keys_per_node
    started = nodes + len(raw["late_ready"])
    late = list(raw["late_ready"].values())
    late_count = max(0, args.late_joiners)
    ready = [seconds for index, seconds in raw["ready"].items() if index != 0]
    joined = [seconds for index, seconds in raw["joined"].items() if index != 0]
    tables = [size for state in raw["state"] for size in state["tables"]]
    dns = [seconds for state in raw["state"] for seconds in state.get("dns_seconds", [])]
    records = [size for state in raw["state"] for size in state["records"]]
    rss = sum(state["rss_mb"] for state in raw["state"]) - raw["baseline_rss_mb"]
    bulk_per_key = raw["advertise_counters"]["datagrams_sent"] / (nodes * keys) if keys else 0.0
    bulk_per_join = raw["join_counters"]["datagrams_sent"] / nodes
    probes = raw["probes"]
    per_key = _per(probes["provide"])
    per_find = _per(probes["find_node"])
    buckets = probes["stale_buckets"]
    reprovide = STEADY_KEYS * per_key / raw["reprovide_interval_s"]
    maintenance = ((_BOOTSTRAP_PINGS + (1 + buckets) * per_find) / raw["rebootstrap_interval_s"]
                   + buckets * per_find / raw["refresh_interval_s"])
    counters = raw["counters"]
    figures: dict[str, Any] = {
        "nodes": nodes,
        "workers": args.workers,
        "keys_per_node": keys,
        "join_rate": args.join_rate,
        "ready_p50_s": _round(percentile(ready, 50)),
        "ready_p99_s": _round(percentile(ready, 99)),
        "ready_max_s": _round(max(ready, default=None)),
        "cpu_ms_per_join": _round(1000 * raw.get("join_cpu_s", 0.0) / nodes, 3),
        **{f"ready_{part}_{q}_ms": _round(percentile(
            [1000 * phases[n] for index, phases in raw.get("ready_phases", {}).items()
             if index != 0], int(q[1:])), 2)
           for n, part in enumerate(("dns", "ping", "self_lookup")) for q in ("p50", "p99")},
        "nodes_started": raw["started"],
        "nodes_not_ready": nodes - 1 - len(ready),
        "late_joiners": late_count,
        "late_ready_p50_s": _round(percentile(late, 50)),
        "late_ready_p99_s": _round(percentile(late, 99)),
        "late_joiners_not_ready": late_count - len(late),
        "datagrams_per_late_join": (_round(raw["late_counters"]["datagrams_sent"] / len(late), 1)
                                    if late else None),
        "joined_p50_s": _round(percentile(joined, 50)),
        "joined_p99_s": _round(percentile(joined, 99)),
        "start_lag_max_s": _round(raw["start_lag_s"]),
        **lookup_figures(raw["lookups"]),
        "routing_table_max": max(tables, default=0),
        "routing_table_mean": _round(sum(tables) / len(tables), 1) if tables else 0,
        "provider_records_mean": _round(sum(records) / len(records), 1) if records else 0,
        "dns_queries_per_node": _round(counters["dns_resolutions"] / started, 3),
        "dns_questions_per_node": (None if raw["dns_questions"] is None
                                   else _round(raw["dns_questions"] / started, 3)),
        "dns_resolution_p50_ms": _ms(percentile(dns, 50)),
        "dns_resolution_p99_ms": _ms(percentile(dns, 99)),
        "lookup_success_ratio_after_churn": None,
        "lookup_p99_ms_after_churn": None,
        "datagrams_per_key_advertised": _round(per_key, 1),
        "datagrams_per_find_node": _round(per_find, 1),
        "queries_per_find_node": (_round(probes["find_node"]["queries"]
                                         / probes["find_node"]["count"], 1)
                                  if probes["find_node"]["count"] else None),
        "eviction_ping_share": _ping_share(probes),
        "buckets_refreshed": _round(buckets, 2),
        "datagrams_per_key_advertised_bulk": _round(bulk_per_key, 1),
        "datagrams_per_join_bulk": _round(bulk_per_join, 1),
        "advertise_seconds": _round(raw["advertise_seconds"], 2),
        "advertise_keys_per_s": _round(nodes * keys / max(raw["advertise_seconds"], 1e-3), 1),
        "advertise_unfinished_nodes": raw["advertise_unfinished"],
        "provide_failures": counters["provide_failures"],
        "rpc_timeouts_join": raw["join_counters"]["rpc_timeouts"],
        "rpc_timeouts_advertise": raw["advertise_counters"]["rpc_timeouts"],
        "msgs_per_node_per_s": _round(reprovide + maintenance, 3),
        "msgs_per_node_per_s_idle_measured": _round(
            probes.get("background_datagrams_per_s", 0.0) / max(1, started), 3),
        "msgs_per_node_per_s_reprovide": _round(reprovide, 3),
        "msgs_per_node_per_s_maintenance": _round(maintenance, 3),
        "msgs_derivation": (
            f"{STEADY_KEYS} keys * {per_key:.1f} / {raw['reprovide_interval_s']:g} s"
            f" + ({_BOOTSTRAP_PINGS} + (1 + {buckets:.2f}) * {per_find:.1f})"
            f" / {raw['rebootstrap_interval_s']:g} s"
            f" + {buckets:.2f} * {per_find:.1f} / {raw['refresh_interval_s']:g} s"),
        "rss_mb_per_node": _round(rss / nodes, 3),
        "wall_seconds": _round(raw.get("wall_seconds", 0.0), 1),
    }
    if "rollout_lookups" in raw:
        figures.update(_rollout_figures(raw, nodes, per_key))
    if "lookups_after_churn" in raw:
        churned = lookup_figures(raw["lookups_after_churn"], "_after_churn")
        figures.update(churned)
        figures["killed"] = raw["killed"]
    if "overload" in raw:
        figures["overload"] = _overload_figures(raw["overload"])
    figures["goals"] = {name: {"bound": bound, "limit": limit,
                               "met": _met(figures.get(name), bound, limit)}
                        for name, (bound, limit) in goals_for(nodes).items()}
    return figures


def _rollout_figures(raw: dict[str, Any], nodes: int, per_key: float) -> dict[str, Any]:
    """Rollout lookups, and what re-announcing as the network grew cost."""
    rollout = lookup_figures(raw["rollout_lookups"], "_rollout")
    early = lookup_figures(raw["rollout_lookups_early"], "_rollout_early")
    reannounced = raw["advertise_counters"].get("reannounced_keys", 0)
    later = (raw["before_churn_counters"].get("reannounced_keys", 0)
             - raw["settled_counters"].get("reannounced_keys", 0))
    seconds = max(raw.get("settled_seconds", 0.0), 1e-3)
    return {
        "rollout_lookup_success_ratio": rollout["lookup_success_ratio_rollout"],
        "rollout_lookup_success_ratio_early": early["lookup_success_ratio_rollout_early"],
        "rollout_lookups": rollout["lookups_rollout"],
        "rollout_lookups_early": early["lookups_rollout_early"],
        "rollout_lookup_p99_ms": rollout["lookup_p99_ms_rollout"],
        "rollout_lookup_p99_ms_early": early["lookup_p99_ms_rollout_early"],
        "rollout_hops_p99": rollout["hops_p99_rollout"],
        "reannounced_keys": reannounced,
        "reannounced_keys_per_node": _round(reannounced / nodes, 2),
        # Each re-announcement is a provide: a lookup and ADD_PROVIDERs, as a key's.
        "reannounce_datagrams_per_join": _round(reannounced * per_key / nodes, 1),
        "reannounced_keys_settled": later,
        "msgs_per_node_per_s_reannounce_settled": _round(later * per_key / nodes / seconds, 4),
        "settled_seconds": _round(seconds, 1),
    }


def _overload_figures(overload: dict[str, Any]) -> dict[str, Any]:
    counters, seconds = overload["counters"], overload["seconds"]
    return {
        "factor": overload["factor"],
        "capacity_keys_per_s": _round(overload["capacity_keys_per_s"], 1),
        "demand_keys_per_s": _round(overload["demand_keys_per_s"], 1),
        "reprovide_interval_s": _round(overload["interval_s"], 3),
        "provides_per_s": _round(counters["provides"] / seconds, 1),
        "rpc_timeouts": counters["rpc_timeouts"],
        "seconds": _round(seconds, 2),
        **lookup_figures(overload["lookups"]),
    }


def _met(value: Any, bound: str, limit: float) -> bool | None:
    if value is None:
        return None
    return bool(value <= limit) if bound == "max" else bool(value >= limit)


_ROWS = [
    ("nodes", "nodes", ""),
    ("ready_p50_s", "ready p50", "s"),
    ("ready_p99_s", "ready p99", "s"),
    ("ready_dns_p99_ms", "  of which DNS, p99", "ms"),
    ("ready_ping_p99_ms", "  of which seeds' answers, p99", "ms"),
    ("ready_self_lookup_p99_ms", "  of which self lookup, p99", "ms"),
    ("cpu_ms_per_join", "  CPU per join (all workers)", "ms"),
    ("late_ready_p50_s", "ready p50, late joiners", "s"),
    ("late_ready_p99_s", "ready p99, late joiners", "s"),
    ("lookup_success_ratio", "lookup success", ""),
    ("lookup_p50_ms", "lookup p50", "ms"),
    ("lookup_p99_ms", "lookup p99", "ms"),
    ("hops_p99", "hops p99", ""),
    ("routing_table_max", "routing table max", "entries"),
    ("dns_queries_per_node", "DNS resolutions per node", ""),
    ("dns_questions_per_node", "DNS questions per node", ""),
    ("dns_resolution_p50_ms", "DNS resolution p50", "ms"),
    ("rollout_lookup_success_ratio", "rollout lookup success", ""),
    ("rollout_lookup_success_ratio_early", "  keys of the first 5 %", ""),
    ("reannounced_keys_per_node", "  keys re-announced per node", ""),
    ("reannounce_datagrams_per_join", "  their datagrams per join", ""),
    ("lookup_success_ratio_after_churn", "success after churn", ""),
    ("lookup_p99_ms_after_churn", "lookup p99 after churn", "ms"),
    ("msgs_per_node_per_s", "datagrams/node/s (steady)", ""),
    ("datagrams_per_key_advertised", "datagrams per key advertised", ""),
    ("datagrams_per_find_node", "datagrams per FIND_NODE", ""),
    ("queries_per_find_node", "queries per FIND_NODE", ""),
    ("eviction_ping_share", "PING/PONG share of those", ""),
    ("rss_mb_per_node", "RSS per node", "MiB"),
    ("wall_seconds", "wall time", "s"),
]


def table(figures: dict[str, Any]) -> str:
    """The figures as an aligned text table, with goals and whether each is met."""
    lines = [f"{'figure':<30} {'value':>12}  {'goal':<12} met"]
    goals = figures.get("goals", {})
    for name, label, unit in _ROWS:
        value = figures.get(name)
        goal = goals.get(name)
        shown = "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
        limit = "" if goal is None else f"{'<=' if goal['bound'] == 'max' else '>='} " \
                                        f"{goal['limit']:g}"
        met = "" if goal is None or goal["met"] is None else ("yes" if goal["met"] else "NO")
        lines.append(f"{label:<30} {shown + (' ' + unit if unit else ''):>12}  {limit:<12} {met}")
    overload = figures.get("overload")
    if overload:
        lines.append(f"overload x{overload['factor']:g}: demand {overload['demand_keys_per_s']:g}"
                     f" keys/s vs capacity {overload['capacity_keys_per_s']:g}; done "
                     f"{overload['provides_per_s']:g}/s; lookups "
                     f"{overload['lookup_success_ratio']} ok, p99 {overload['lookup_p99_ms']} ms")
    return "\n".join(lines)
