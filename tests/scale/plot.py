"""The figure of ``docs/scale.md``: ready time and per-node state against N.

``nox -s scale -- plot docs/scale.png tests/scale/results/nodes-*.json`` (needs
matplotlib, which the nox session installs; spegel itself does not depend on it).
It also prints the results table of the page (markdown). Left: ready time p50 and
p99 (nodes joining alone, and at the run's join rate). Right: routing-table entries
per node (mean and max) beside what a full mesh needs (N - 1 peers), on log scales.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def load(paths: list[Path]) -> list[dict[str, Any]]:
    """The runs in ``paths``, smallest N first, the faster-joining run of an N first
    (one per N, join rate and keys per node: the last file wins)."""
    runs: dict[tuple[int, float, int], dict[str, Any]] = {}
    for path in paths:
        figures = json.loads(path.read_text())
        runs[(int(figures["nodes"]), -float(figures["join_rate"]),
              int(figures["keys_per_node"]))] = figures
    return [runs[key] for key in sorted(runs)]


def one_per_n(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first run of each N (the faster-joining one, after :func:`load`)."""
    seen: dict[int, dict[str, Any]] = {}
    for run in runs:
        seen.setdefault(int(run["nodes"]), run)
    return list(seen.values())


def draw(runs: list[dict[str, Any]], out: Path) -> None:
    """Write the two-panel PNG for ``runs`` to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    every = runs
    runs = one_per_n(runs)
    nodes = [r["nodes"] for r in runs]
    figure, (ready, state) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for key, style, label in (("late_ready_p50_s", "o-", "p50, joining alone"),
                              ("late_ready_p99_s", "s-", "p99, joining alone")):
        points = [(r["nodes"], r[key] * 1000) for r in runs if r.get(key) is not None]
        ready.plot([n for n, _ in points], [v for _, v in points], style, label=label)
    rates = sorted({float(r["join_rate"]) for r in every}, reverse=True)
    for rate in rates:
        at_rate = [r for r in every if float(r["join_rate"]) == rate]
        line = "--" if rate == rates[0] else ":"
        for key, mark, label in (("ready_p50_s", "o", "p50"), ("ready_p99_s", "s", "p99")):
            points = [(r["nodes"], r[key] * 1000) for r in at_rate if r.get(key) is not None]
            ready.plot([n for n, _ in points], [v for _, v in points], mark + line,
                       label=f"{label}, {rate:g} nodes joining per s")
    points = [(r["nodes"], r["dns_resolution_p50_ms"]) for r in runs
              if r.get("dns_resolution_p50_ms") is not None]
    ready.plot([n for n, _ in points], [v for _, v in points], "^:", color="black",
               label="of which DNS resolution, p50")
    ready.axhline(100, color="grey", linestyle=":", label="goal p99 at 1000 (100 ms)")
    ready.set_xscale("log")
    ready.set_yscale("log")
    ready.set_xlabel("nodes (N)")
    ready.set_ylabel("start to ready (ms)")
    ready.set_title("Ready time (DNS bootstrap + self-lookup)")
    ready.grid(True, which="both", alpha=0.3)
    ready.legend(fontsize="small")

    state.plot(nodes, [n - 1 for n in nodes], "k--", label="full mesh: N - 1 peers")
    state.plot(nodes, [r["routing_table_max"] for r in runs], "s-", label="routing table max")
    state.plot(nodes, [r["routing_table_mean"] for r in runs], "o-",
               label="routing table mean")
    state.set_xscale("log")
    state.set_yscale("log")
    state.set_xlabel("nodes (N)")
    state.set_ylabel("peers known per node")
    state.set_title("Per-node state")
    state.grid(True, which="both", alpha=0.3)
    state.legend()
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)


#: Rows of the results table in docs/scale.md: (JSON key, label, unit).
ROWS = [
    ("join_rate", "join rate (nodes/s)", ""),
    ("keys_per_node", "keys per node advertised", ""),
    ("ready_p50_s", "ready p50, joining at that rate", "s"),
    ("ready_p99_s", "ready p99, joining at that rate", "s"),
    ("ready_dns_p99_ms", "  of which DNS, p99", "ms"),
    ("ready_ping_p99_ms", "  of which seeds' answers, p99", "ms"),
    ("ready_self_lookup_p99_ms", "  of which rest of self lookup, p99", "ms"),
    ("cpu_ms_per_join", "CPU per join, all processes of the nodes", "ms"),
    ("datagrams_per_join_bulk", "datagrams per join", ""),
    ("late_ready_p50_s", "ready p50, late joiners (quiet network)", "s"),
    ("late_ready_p99_s", "ready p99, late joiners (quiet network)", "s"),
    ("dns_resolution_p50_ms", "DNS resolution p50", "ms"),
    ("lookup_success_ratio", "lookup success", ""),
    ("lookup_p50_ms", "lookup p50", "ms"),
    ("lookup_p99_ms", "lookup p99", "ms"),
    ("hops_p99", "hops p99", ""),
    ("routing_table_max", "routing table max (contacts)", ""),
    ("routing_table_mean", "routing table mean (contacts)", ""),
    ("dns_queries_per_node", "DNS resolutions per node", ""),
    ("lookup_success_ratio_after_churn", "lookup success after 20 % churn", ""),
    ("lookup_p99_ms_after_churn", "lookup p99 after churn", "ms"),
    ("msgs_per_node_per_s", "datagrams per node per s, steady, 50 keys", ""),
    ("datagrams_per_key_advertised", "datagrams per key advertised", ""),
    ("datagrams_per_find_node", "datagrams per FIND_NODE", ""),
    ("queries_per_find_node", "queries per FIND_NODE", ""),
    ("eviction_ping_share", "PING/PONG share of those datagrams", ""),
    ("rss_mb_per_node", "RSS per node", "MiB"),
    ("wall_seconds", "wall time of the run", "s"),
]


def markdown(runs: list[dict[str, Any]]) -> str:
    """The results table of docs/scale.md: one column per run."""
    head = "| N | " + " | ".join(str(r["nodes"]) for r in runs) + " |"
    lines = [head, "| --- |" + " ---: |" * len(runs)]
    for key, label, unit in ROWS:
        cells = []
        for run in runs:
            value = run.get(key)
            if value is None:
                cells.append("-")
            elif key.endswith("_s") and unit == "s" and key != "wall_seconds":
                cells.append(f"{value * 1000:.0f} ms")
            else:
                cells.append(f"{value:g}{' ' + unit if unit else ''}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.scale.plot OUT.png RUN.json...``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print("usage: python -m tests.scale.plot OUT.png RUN.json...", file=sys.stderr)
        return 2
    runs = load([Path(p) for p in args[1:]])
    draw(runs, Path(args[0]))
    print(markdown(runs))
    print(f"wrote {args[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
