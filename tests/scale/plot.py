"""The figure of ``docs/scale.md``: ready time and per-node state against N.

``nox -s scale -- plot docs/scale.png tests/scale/results/nodes-*.json`` (needs
matplotlib, which the nox session installs; spegel itself does not depend on it).
Left: ready time p50 and p99. Right: routing-table entries per node (mean and max)
beside what a full mesh needs (N - 1 peers per node), on log scales.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def load(paths: list[Path]) -> list[dict[str, Any]]:
    """The runs in ``paths``, smallest N first (one per N: the last file wins)."""
    runs: dict[int, dict[str, Any]] = {}
    for path in paths:
        figures = json.loads(path.read_text())
        runs[int(figures["nodes"])] = figures
    return [runs[n] for n in sorted(runs)]


def draw(runs: list[dict[str, Any]], out: Path) -> None:
    """Write the two-panel PNG for ``runs`` to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes = [r["nodes"] for r in runs]
    figure, (ready, state) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    ready.plot(nodes, [r["ready_p50_s"] * 1000 for r in runs], "o-", label="ready p50")
    ready.plot(nodes, [r["ready_p99_s"] * 1000 for r in runs], "s-", label="ready p99")
    ready.axhline(100, color="grey", linestyle=":", label="goal p99 at 1000 (100 ms)")
    ready.set_xscale("log")
    ready.set_xlabel("nodes (N)")
    ready.set_ylabel("start to ready (ms)")
    ready.set_title("Ready time (DNS bootstrap + self-lookup)")
    ready.set_ylim(bottom=0)
    ready.grid(True, which="both", alpha=0.3)
    ready.legend()

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


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.scale.plot OUT.png RUN.json...``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print("usage: python -m tests.scale.plot OUT.png RUN.json...", file=sys.stderr)
        return 2
    draw(load([Path(p) for p in args[1:]]), Path(args[0]))
    print(f"wrote {args[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
