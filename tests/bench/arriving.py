"""``nox -s bench -- arriving``: a second pull started while the first one still downloads.

Two nodes, each with its own real containerd, behind one upstream throttled to
``--rate-mbps`` MB/s (the test kit's proxy in front of docker-registry). Node A pulls
an image with one ``--layer-mib`` MiB layer; node B pulls the same image
``--offset`` seconds later. The run is done with ``--advertise-arriving`` on and off,
in the same invocation, each on a fresh fleet; it prints the upstream bytes relative
to the layer and when each pull ended.

Goal (issue 15): with 16 MB/s and 64 MiB, B ends within 1.5 s of A and the upstream
sends <= 1.25x the layer with arriving on.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from spegel_core.testing.fleet import Fleet, until

MIB = 2**20


def one_run(workdir: Path, *, arriving: bool, layer: int, rate: float,
            offset: float) -> dict[str, float | bool | str]:
    """One fleet, two pulls ``offset`` s apart; the figures of that run."""
    flag = "true" if arriving else "false"
    with Fleet(workdir, nodes=2, layer_sizes=(layer,), rate=rate, seed=15,
               node_args=["--advertise-arriving", flag]) as fleet:
        a, b = fleet.nodes
        digest = fleet.layers[0]
        fleet.upstream.reset()
        started = time.monotonic()
        pull_a = a.start_pull(fleet.reference)
        until(lambda: (a.ingest_size(digest) or 0) > 0, 60, "A's layer never started")
        time.sleep(max(0.0, offset - (time.monotonic() - started)))
        b_started = time.monotonic() - started
        pull_b = b.start_pull(fleet.reference)
        ends = {}
        for name, pull in (("a", pull_a), ("b", pull_b)):
            code = pull.wait(timeout=600)
            ends[name] = time.monotonic() - started
            if code != 0:
                detail = pull.stderr.read() if pull.stderr else ""
                raise RuntimeError(f"{name}'s pull failed: {detail}")
        complete = all("complete" in member.check(fleet.reference) for member in fleet.nodes)
        served = a.metric("spegel_arriving_bytes_served_total")
        return {
            "advertise_arriving": arriving,
            "a_end_s": round(ends["a"], 3),
            "b_start_s": round(b_started, 3),
            "b_end_s": round(ends["b"], 3),
            "b_after_a_s": round(ends["b"] - ends["a"], 3),
            "upstream_x_layer": round(fleet.upstream.bytes_down / layer, 3),
            "arriving_bytes_served_by_a": served,
            "images_complete": complete,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nox -s bench -- arriving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer-mib", type=float, default=64)
    parser.add_argument("--rate-mbps", type=float, default=16, help="upstream MB/s (1e6 B/s)")
    parser.add_argument("--offset", type=float, default=1.0, help="seconds between the pulls")
    parser.add_argument("--rounds", type=int, default=1, help="on/off pairs")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.layer_mib <= 0 or args.rate_mbps <= 0 or args.offset < 0 or args.rounds < 1:
        parser.error("--layer-mib and --rate-mbps must be positive, --offset >= 0, --rounds >= 1")
    layer, rate = int(args.layer_mib * MIB), args.rate_mbps * 1e6
    runs = []
    with tempfile.TemporaryDirectory(prefix="spegel-bench-arriving-") as tmp:
        for round_ in range(args.rounds):
            for arriving in (True, False):
                workdir = Path(tmp) / f"r{round_}-{'on' if arriving else 'off'}"
                runs.append(one_run(workdir, arriving=arriving, layer=layer, rate=rate,
                                    offset=args.offset))
    print(f"layer {args.layer_mib:g} MiB, upstream {args.rate_mbps:g} MB/s, "
          f"B starts {args.offset:g} s after A ({platform.machine()}, {platform.node()})")
    print(f"{'arriving':>9} {'A ends':>8} {'B ends':>8} {'B-A':>7} {'upstream':>9} {'complete':>9}")
    for run in runs:
        print(f"{'on' if run['advertise_arriving'] else 'off':>9} {run['a_end_s']:>7.2f}s "
              f"{run['b_end_s']:>7.2f}s {run['b_after_a_s']:>6.2f}s "
              f"{run['upstream_x_layer']:>8.2f}x {run['images_complete']!s:>9}")
    on = [run for run in runs if run["advertise_arriving"]]
    met = all(float(run["b_after_a_s"]) <= 1.5 and float(run["upstream_x_layer"]) <= 1.25
              for run in on)
    print(f"goal (on: B within 1.5 s of A, upstream <= 1.25x): {'met' if met else 'NOT met'}")
    if args.json is not None:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
