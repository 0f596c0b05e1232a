"""``nox -s fleet``: a whole fleet pulls one new image at once, single flight on and off.

``--nodes`` nodes, each a real ``spegel registry`` with its own real containerd,
behind one upstream throttled to ``--upstream-mbps`` MB/s (megabytes; the test
kit's proxy in front of docker-registry). Each mode runs on a fresh fleet:

1. a lone pull: node a pulls an image of the same size that nobody has (the
   reference time);
2. the fleet moment: every node starts pulling the new image at the same instant.

It prints, for ``--single-flight`` true and false (and the original behaviour:
also ``--advertise-arriving false``), the bytes the upstream sent
relative to the image and each node's pull time relative to the lone pull, and
(``--json``, ``--plot``) writes them out. Goals (issue 16) at 6-8 nodes: upstream
<= 1.2x the image with single flight (off: about N x), slowest node <= 1.5x a lone
pull, every pull succeeds.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from spegel_core.testing.fleet import Fleet

MIB = 2**20


def _timed_pulls(fleet: Fleet, reference: str) -> dict[str, float]:
    """Every node pulls ``reference`` at once; seconds to each node's end."""
    ends: dict[str, float] = {}
    errors: list[str] = []
    started = time.monotonic()
    pulls = [(member.name, member.start_pull(reference)) for member in fleet.nodes]

    def wait(name: str, pull: subprocess.Popen[str]) -> None:
        code = pull.wait(timeout=600)
        ends[name] = time.monotonic() - started
        if code != 0:
            errors.append(f"{name}: {pull.stderr.read() if pull.stderr else ''}")

    threads = [threading.Thread(target=wait, args=pair) for pair in pulls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError("pulls failed: " + "; ".join(errors))
    return dict(sorted(ends.items()))


#: The modes compared: flags of every node.
MODES = {
    "on": ["--single-flight", "true"],
    "off": ["--single-flight", "false"],
    "original": ["--single-flight", "false", "--advertise-arriving", "false"],
}


def one_run(workdir: Path, *, mode: str, nodes: int, layer: int,
            rate: float) -> dict[str, object]:
    with Fleet(workdir, nodes=nodes, layer_sizes=(layer,), rate=rate, seed=16,
               node_args=MODES[mode]) as fleet:
        lone_ref = fleet.add_image("lone", (layer,), seed=61)
        lone = _timed_pulls_one(fleet, lone_ref)
        image = sum(fleet.image.blobs.values()) if fleet.image is not None else layer
        fleet.upstream.reset()
        ends = _timed_pulls(fleet, fleet.reference)
        upstream = fleet.upstream.bytes_down
        manifest_gets = sum(1 for line in fleet.upstream.requests
                            if line.startswith("GET ") and "/manifests/sha256:" in line)
        complete = all("complete" in member.check(fleet.reference) for member in fleet.nodes)
        return {
            "mode": mode,
            "flags": " ".join(MODES[mode]),
            "lone_pull_s": round(lone, 3),
            "pull_s": {name: round(end, 3) for name, end in ends.items()},
            "pull_x_lone": {name: round(end / lone, 2) for name, end in ends.items()},
            "slowest_x_lone": round(max(ends.values()) / lone, 2),
            "upstream_bytes": upstream,
            "image_bytes": image,
            "upstream_x_image": round(upstream / image, 2),
            "upstream_manifest_gets": manifest_gets,
            "complete": complete,
        }


def _timed_pulls_one(fleet: Fleet, reference: str) -> float:
    member = fleet.nodes[0]
    started = time.monotonic()
    pull = member.start_pull(reference)
    if pull.wait(timeout=600) != 0:
        raise RuntimeError(f"lone pull failed: {pull.stderr.read() if pull.stderr else ''}")
    return time.monotonic() - started


def plot(results: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    width = 0.8 / len(results)
    for index, result in enumerate(results):
        offset = (index - (len(results) - 1) / 2) * width
        times = result["pull_x_lone"]
        assert isinstance(times, dict)
        names = list(times)
        label = f"{result['flags']} (upstream {result['upstream_x_image']}x the image)"
        ax.bar([i + offset for i in range(len(names))], list(times.values()), width,
               label=label)
        ax.set_xticks(range(len(names)), names)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("node")
    ax.set_ylabel("pull time / lone pull")
    ax.set_title("Every node pulls one new image at once")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=6)
    parser.add_argument("--layer-mib", type=int, default=32)
    parser.add_argument("--upstream-mbps", type=float, default=16.0,
                        help="upstream rate in MB/s (megabytes per second)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--modes", default="on,off,original",
                        help="comma list of: on (--single-flight), off (--single-flight "
                        "false), original (also --advertise-arriving false)")
    args = parser.parse_args(argv)
    results = []
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory(prefix="spegel-fleet-") as tmp:
            result = one_run(Path(tmp), mode=mode, nodes=args.nodes,
                             layer=args.layer_mib * MIB, rate=args.upstream_mbps * 1e6)
        results.append(result)
        print(json.dumps(result), flush=True)
    print(f"\n{args.nodes} nodes, one {args.layer_mib} MiB layer, upstream "
          f"{args.upstream_mbps:g} MB/s ({platform.machine()}, {platform.python_version()})")
    print("| flags | upstream / image | manifest GETs upstream | lone pull | slowest / lone | "
          "each node / lone | complete |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        each = r["pull_x_lone"]
        assert isinstance(each, dict)
        print(f"| `{r['flags']}` | {r['upstream_x_image']}x | {r['upstream_manifest_gets']} | "
              f"{r['lone_pull_s']} s | {r['slowest_x_lone']}x | "
              f"{' '.join(str(v) for v in each.values())} | {r['complete']} |")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.plot is not None:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
