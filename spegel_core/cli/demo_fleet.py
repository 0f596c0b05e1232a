"""``spegel demo --fleet``: the fleet moment on loopback, single flight on and off.

N nodes, each a ``spegel registry`` with its own real containerd, behind one
upstream registry throttled to ``--upstream-mbps`` MB/s; every node pulls the same
new image at the same instant. Each node's progress and source (upstream; an arriving
peer, its parent in the tree; a peer) is shown live; the run ends with the bytes and the
manifest GETs the upstream served and the slowest pull, with ``--single-flight`` on,
then off.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from spegel_core.localcluster.fleet import FleetNode

INSTALL = ("spegel demo --fleet needs containerd, docker-registry and skopeo, as root: "
           "apt-get install -y containerd docker-registry skopeo")
MIB = 2**20


def missing_tools() -> bool:
    """Whether something the fleet demo needs is not installed (or not root)."""
    tools = ("containerd", "ctr", "docker-registry", "skopeo")
    return any(shutil.which(tool) is None for tool in tools) or os.geteuid() != 0


def run_fleet_demo(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run both modes; 0 when every pull succeeded."""
    if missing_tools():
        print(INSTALL, file=out)
        return 1
    if not 2 <= args.nodes <= 12:
        raise SystemExit("spegel demo --fleet: --nodes must be between 2 and 12")
    layer = int(args.layer_mib * MIB)
    rate = args.upstream_mbps * 1e6
    print(f"spegel demo --fleet: {args.nodes} nodes with their own containerd, one new image "
          f"({args.layer_mib:g} MiB layer), upstream {args.upstream_mbps:g} MB/s", file=out)
    summary = []
    for single_flight in (True, False):
        workdir = Path(tempfile.mkdtemp(prefix="spegel-fleet-demo-"))
        try:
            summary.append(_one(workdir, single_flight, args.nodes, layer, rate, out))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    print("spegel demo --fleet: summary", file=out)
    for flag, upstream, gets, slowest, ok in summary:
        print(f"  --single-flight {flag:<5}  upstream sent {upstream:.2f}x the image "
              f"({gets} manifest GETs), slowest pull {slowest:.2f} s"
              f"{'' if ok else ', A PULL FAILED'}", file=out)
    return 0 if all(ok for *_, ok in summary) else 1


def _one(workdir: Path, single_flight: bool, nodes: int, layer: int, rate: float,
         out: TextIO) -> tuple[str, float, int, float, bool]:
    from spegel_core.localcluster.fleet import Fleet  # only when the tools are there

    flag = "true" if single_flight else "false"
    print(f"\n--single-flight {flag}: starting {nodes} nodes ...", file=out, flush=True)
    fleet = Fleet(workdir, nodes=nodes, layer_sizes=(layer,), rate=rate, seed=int(time.time()),
                  node_args=["--single-flight", flag, "--log-level", "WARNING"])
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # "wrote hosts.toml" of each node
            fleet.start()
        assert fleet.image is not None
        image = sum(fleet.image.blobs.values())
        digest = fleet.layers[0]
        fleet.upstream.reset()
        started = time.monotonic()
        pulls = {member.name: member.start_pull(fleet.reference) for member in fleet.nodes}
        ends: dict[str, float] = {}
        live = out.isatty()
        drawn = 0
        while len(ends) < len(pulls) and time.monotonic() - started < 600:
            for name, pull in pulls.items():
                if name not in ends and pull.poll() is not None:
                    ends[name] = time.monotonic() - started
            lines = [_line(member, digest, layer, ends.get(member.name))
                     for member in fleet.nodes]
            if live:
                if drawn:
                    out.write(f"\x1b[{drawn}A")
                out.write("".join(f"\x1b[2K{text}\n" for text in lines))
                out.flush()
                drawn = len(lines)
            time.sleep(0.2)
        if not live:
            for member in fleet.nodes:
                print(_line(member, digest, layer, ends.get(member.name)), file=out)
        ok = all(pull.wait(timeout=60) == 0 for pull in pulls.values())
        upstream = fleet.upstream.bytes_down / image
        gets = sum(1 for line in fleet.upstream.requests
                   if line.startswith("GET ") and "/manifests/" in line)
        slowest = max(ends.values(), default=0.0)
        print(f"  upstream sent {upstream:.2f}x the image ({gets} manifest GETs); slowest "
              f"pull {slowest:.2f} s", file=out)
        return flag, upstream, gets, slowest, ok
    finally:
        fleet.stop()


def _line(member: FleetNode, digest: str, layer: int, end: float | None) -> str:
    blob = member.daemon.content_path / "blobs" / digest.replace(":", "/")
    have = layer if blob.exists() else (member.ingest_size(digest) or 0)
    width = 24
    filled = int(width * min(1.0, have / layer))
    bar = "#" * filled + "." * (width - filled)
    done = f"done in {end:.2f} s" if end is not None else ""
    return (f"  node {member.name} [{bar}] {100 * have / layer:5.1f}%  "
            f"{_source(member):<15} {done}")


def _source(member: FleetNode) -> str:
    """Where the node's layer comes from, read from its metrics."""
    try:
        if member.metric("spegel_single_flight_claims_total", 'role="go"'):
            return "upstream"
        if member.metric("spegel_single_flight_claims_total", 'role="wait"'):
            return "arriving peer"
        if member.metric("spegel_mirror_bytes_total", 'source="peer"'):
            # Without single flight a peer may be arriving or committed: not told apart.
            return "peer"
    except OSError:
        return "?"
    return "upstream"
