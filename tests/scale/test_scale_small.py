"""Small runs of ``nox -s scale`` in the normal suite: the simulation works end to end.

No timing goals here (they belong to the full runs in ``docs/scale.md``): the JSON
has every figure with sane values, lookups succeed, and under reprovide overload
lookups still succeed.
"""

from __future__ import annotations

import ipaddress
import json
import tempfile
from pathlib import Path

import pytest

from spegel_core.testing.dns import dnsmasq_path
from tests.scale import report
from tests.scale.dns import QuietDnsServer
from tests.scale.joincost import main as joincost_main
from tests.scale.joincost import measure
from tests.scale.population import Population
from tests.scale.run import main_cli, parse_args, simulate

# Not a skip: CI installs Debian dnsmasq-base.
assert dnsmasq_path() is not None, "dnsmasq is required (apt-get install dnsmasq-base)"

REQUIRED = ("nodes", "ready_p50_s", "ready_p99_s", "lookup_success_ratio", "lookup_p50_ms",
            "lookup_p99_ms", "hops_p99", "routing_table_max", "dns_queries_per_node",
            "lookup_success_ratio_after_churn", "lookup_p99_ms_after_churn",
            "msgs_per_node_per_s", "rss_mb_per_node", "rollout_lookup_success_ratio",
            "rollout_lookup_success_ratio_early", "reannounced_keys_per_node",
            "reannounce_datagrams_per_join")


def test_population_is_loopback_distinct_and_shares_popular_keys() -> None:
    pop = Population(nodes=600, keys_per_node=50, seed=3, base_octet=40)
    hosts = {pop.host(i) for i in range(pop.nodes)}
    assert len(hosts) == pop.nodes
    assert all(ipaddress.ip_address(h).is_loopback for h in hosts)
    assert len({pop.node_id(i) for i in range(pop.nodes)}) == pop.nodes
    keys = pop.keys(7)
    assert len(keys) == len(set(keys)) == 50
    popular = [k for k in keys if k in pop.popular]
    assert len(popular) == pop.popular_count == 5
    assert all(7 in pop.holders(7, k) and len(pop.holders(7, k)) > 50 for k in popular)
    assert pop.holders(7, keys[0]) == frozenset({7})


def test_percentile_is_nearest_rank() -> None:
    assert report.percentile([], 50) is None
    assert report.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert report.percentile(list(range(1, 101)), 99) == 99
    assert report.percentile([5.0], 99) == 5.0


def test_small_run_reports_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    out = tmp_path / "scale.json"
    assert main_cli(["--nodes", "50", "--keys-per-node", "10", "--join-rate", "50",
                     "--lookups", "200", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert "lookup success" in capsys.readouterr().out
    for key in REQUIRED:
        assert figures[key] is not None, key
    assert figures["nodes"] == 50 and figures["nodes_not_ready"] == 0
    # The fleet phase: every node claims one digest within a second (single flight).
    assert figures["fleet_nodes"] >= 50 and figures["fleet_claims_unanswered"] == 0
    assert 1 <= figures["fleet_upstream_grants"] <= 2
    assert 1 <= figures["fleet_max_children"] <= figures["fleet_fanout"]
    assert 1 <= figures["fleet_tree_depth_max"] <= figures["fleet_tree_depth_goal"]
    assert 0 < figures["fleet_claim_p50_ms"] <= figures["fleet_claim_p99_ms"] < 1000
    assert 0 < figures["ready_p50_s"] <= figures["ready_p99_s"] < 30
    assert figures["lookups"] == 200 and figures["lookup_success_ratio"] >= 0.99
    assert 0 <= figures["lookup_p50_ms"] <= figures["lookup_p99_ms"] < 1000
    assert 0 <= figures["hops_p99"] <= 4
    assert figures["late_joiners"] == 10 and figures["late_joiners_not_ready"] == 0
    assert 0 < figures["late_ready_p50_s"] <= figures["late_ready_p99_s"] < 30
    assert 1 <= figures["routing_table_max"] <= 50 + 10 - 1
    assert 1 <= figures["dns_queries_per_node"] <= 3
    assert figures["killed"] == 10
    assert figures["lookup_success_ratio_after_churn"] >= 0.95
    assert figures["lookup_p99_ms_after_churn"] < 1000
    assert figures["datagrams_per_key_advertised"] > 20
    assert 0 <= figures["eviction_ping_share"] < 0.5
    assert 0 < figures["msgs_per_node_per_s"] < 100
    assert figures["rss_mb_per_node"] > 0
    # Keys announced as their nodes joined, looked up right after the rollout.
    assert figures["rollout_lookups"] == figures["rollout_lookups_early"] == 200
    assert figures["rollout_lookup_success_ratio"] >= 0.99
    assert figures["rollout_lookup_success_ratio_early"] >= 0.99
    # The network grew from 1 to 50 nodes: the first nodes announced again, and
    # after the rollout (a network of constant size) nobody did.
    assert figures["reannounced_keys"] > 0
    assert figures["reannounced_keys_settled"] == 0
    assert set(figures["goals"]) == set(report.GOALS_1000)


def test_lookups_survive_reprovide_overload() -> None:
    """Reprovide due twice as fast as the CPU announces keys: lookups still succeed.

    Twenty nodes share each core here, so each gets the smallest cap (one key at a
    time); the field default (8) is sized for a node with a core of its own.
    """
    args = parse_args(["--nodes", "40", "--keys-per-node", "20", "--join-rate", "40",
                       "--lookups", "300", "--churn", "0", "--overload", "2", "--soak", "3",
                       "--reprovide-concurrency", "1", "--advertise-concurrency", "8"])
    figures = simulate(args)
    overload = figures["overload"]
    assert overload["demand_keys_per_s"] > 1.5 * overload["capacity_keys_per_s"]
    assert overload["provides_per_s"] < overload["demand_keys_per_s"]  # reproviding waits
    assert overload["lookups"] == 300
    assert overload["lookup_success_ratio"] >= 0.99


async def test_join_cost_counts_a_whole_join() -> None:
    # The small run of ``nox -s scale -- joincost``: joiners resolve a real dnsmasq.
    with tempfile.TemporaryDirectory() as workdir:
        dns = QuietDnsServer(Path(workdir))
        dns.start()
        try:
            cost = await measure(30, 10, dns=dns)
        finally:
            dns.stop()
    assert cost.joins == 10 and cost.dns
    # A join: the seeds' FIND_NODE and a self lookup; each request has an answer, and
    # a node that takes the joiner into its table checks its address first (a PING and
    # its PONG, docs/security.md).
    assert 10 <= cost.datagrams_per_join <= 4 * 35
    assert cost.cpu_ms_per_join > 0 and cost.cpu_us_per_datagram > 0
    assert 0 < cost.ready_p50_ms < 5000


@pytest.mark.parametrize("argv", [["--base", "0"], ["--joins", "-3"], ["--joins", "x"]])
def test_join_cost_refuses_bad_sizes(argv: list[str], capsys: pytest.CaptureFixture[str]
                                     ) -> None:
    with pytest.raises(SystemExit) as exit_info:
        joincost_main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert ("--base" in err or "--joins" in err) and "Traceback" not in err
