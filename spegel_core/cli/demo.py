"""``spegel demo``: a sample image, local nodes on loopback addresses, a verified pull."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from spegel_core.node_process import NodeProcess
from spegel_core.pull import MirrorClient, PullError

DEMO_REFERENCE = "docker.io/library/demo:v1"


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``spegel demo`` options to ``parser``."""
    parser.add_argument("--nodes", type=int, default=3, help="Nodes to start (default 3).")
    parser.add_argument("--first-ip", default="127.0.0.2",
                        help="Loopback address of the first node (default 127.0.0.2).")
    parser.add_argument("--port", type=int, default=5000, help="Mirror port of every node.")
    parser.add_argument("--layer-mib", type=float, default=16.0,
                        help="Size of each of the two sample layers in MiB (default 16).")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="Keep layouts and logs here (default: a temporary directory).")
    parser.add_argument("--fleet", action="store_true",
                        help="The fleet moment instead: every node (each with its own "
                        "containerd) pulls one new image at once from a throttled upstream, "
                        "--single-flight on and off (needs containerd, docker-registry, skopeo).")
    parser.add_argument("--upstream-mbps", type=float, default=16.0,
                        help="With --fleet: the upstream's rate in MB/s (default 16).")


@dataclass
class DemoNode:
    """A numbered node of the demo: its layout and its ``spegel registry`` process."""

    index: int
    layout: Path
    process: NodeProcess

    @property
    def url(self) -> str:
        """The node's mirror URL."""
        return self.process.url


def _ip(first: str, offset: int) -> str:
    parts = [int(p) for p in first.split(".")]
    parts[3] += offset
    if parts[0] != 127 or parts[3] > 254:
        raise SystemExit("spegel demo: --first-ip must be a 127.x.y.z loopback address")
    return ".".join(map(str, parts))


def _wait_ready(node: DemoNode) -> float:
    try:
        return node.process.wait_ready()
    except (RuntimeError, TimeoutError) as exc:
        raise SystemExit(f"spegel demo: node {node.index}: {exc}") from None


def _wait_resolvable(node: DemoNode, timeout: float = 20.0) -> float:
    """Until the node answers the demo tag (from a peer); returns the seconds waited."""
    started = time.monotonic()
    url = f"{node.url}/v2/library/demo/manifests/v1?ns=docker.io"
    while time.monotonic() - started < timeout:
        try:
            request = urllib.request.Request(url, method="HEAD")
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    raise SystemExit(f"spegel demo: node {node.index} did not find the image in {timeout:.0f}s")


class ProgressBar:
    """A text progress bar: redrawn in place on a terminal, every 25 % otherwise."""

    def __init__(self, label: str, width: int = 30) -> None:
        self.label, self.width = label, width
        self.tty = sys.stdout.isatty()
        self._last = -1

    def __call__(self, done: int, total: int) -> None:
        """Show ``done`` of ``total`` bytes."""
        percent = min(100, int(100 * done / total) if total else 100)
        if percent == self._last or (not self.tty and percent // 25 == self._last // 25):
            return
        self._last = percent
        filled = self.width * percent // 100
        bar = "#" * filled + "." * (self.width - filled)
        text = f"  {self.label} [{bar}] {percent:3d}%  {done / 2**20:7.1f} MiB"
        print(("\r" if self.tty else "") + text, end="" if self.tty else "\n", flush=True)

    def finish(self) -> None:
        """End the bar's line."""
        if self.tty:
            print()


def run_demo(args: argparse.Namespace) -> int:
    """Run ``spegel demo`` (``--fleet``: the fleet demo); returns the exit code."""
    from spegel_core.oci.image_builder import build_image

    if args.fleet:
        from spegel_core.cli.demo_fleet import run_fleet_demo

        return run_fleet_demo(args)

    if args.nodes < 1 or args.nodes > 50:
        raise SystemExit("spegel demo: --nodes must be between 1 and 50")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="spegel-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ips = [_ip(args.first_ip, i) for i in range(args.nodes)]
    nodes: list[DemoNode] = []
    for index, ip in enumerate(ips, start=1):
        layout = workdir / f"node-{index}"
        layout.mkdir(exist_ok=True)
        peers = [f"/ip4/{other}/udp/{args.port + 1}" for other in ips if other != ip]
        extra = ["--router", "kademlia", "--bootstrap-kind", "static",
                 "--static-peers", ",".join(peers)] if peers else []
        process = NodeProcess(ip, args.port, [
            "--content-store", "oci-layout", "--oci-layout-path", str(layout),
            "--log-level", "WARNING", *extra], workdir / f"node-{index}.log")
        nodes.append(DemoNode(index, layout, process))
    layer = int(args.layer_mib * 2**20)
    print(f"spegel demo: building {DEMO_REFERENCE} (2 platforms, 2 layers of "
          f"{args.layer_mib:g} MiB) into {nodes[0].layout}")
    image = build_image(nodes[0].layout, DEMO_REFERENCE, layer_sizes=(layer, layer))
    print(f"  index {image.index_digest}, {len(image.blobs)} blobs, "
          f"{image.total_size / 2**20:.1f} MiB")
    target = nodes[-1]
    try:
        for node in nodes:
            node.process.start()
        for node in nodes:
            took = _wait_ready(node)
            print(f"  node {node.index} on {node.url} ready in {took * 1000:.0f} ms")
        if target is not nodes[0]:
            found = _wait_resolvable(target)
            print(f"  node {target.index} found the image through the DHT in "
                  f"{found * 1000:.0f} ms")
        holder = "it" if target is nodes[0] else f"node {nodes[0].index} holds it"
        print(f"spegel demo: pulling {DEMO_REFERENCE} through node {target.index} "
              f"({target.url}); {holder}")
        bar = ProgressBar("pull")
        client = MirrorClient(target.process.ip, target.process.port)
        started = time.perf_counter()
        try:
            result = client.pull(DEMO_REFERENCE, progress=bar)
        except PullError as exc:
            bar.finish()
            print(f"spegel demo: pull failed: {exc}", file=sys.stderr)
            return 1
        finally:
            client.close()
        bar.finish()
        elapsed = time.perf_counter() - started
        by_source: dict[str, int] = {}
        for digest, source in result.sources.items():
            by_source[source] = by_source.get(source, 0) + image.blobs.get(digest, 0)
        print("spegel demo: summary")
        print(f"  digests verified : {len(result.verified)} "
              f"(index {(result.digest == image.index_digest and 'matches') or 'DIFFERS'})")
        print(f"  bytes            : {result.bytes} ({result.bytes / 2**20:.1f} MiB)")
        print(f"  time             : {elapsed * 1000:.0f} ms "
              f"({result.bytes / max(elapsed, 1e-9) / 1e9:.2f} GB/s)")
        for source, count in sorted(by_source.items()):
            print(f"  from {source:<11} : {count / 2**20:.1f} MiB")
        print(f"  {'digest':<22} {'bytes':>12}  source")
        for digest in result.verified:
            print(f"  {digest[:22]} {image.blobs.get(digest, 0):>12}  "
                  f"{result.sources.get(digest, '?')}")
        ok = result.digest == image.index_digest
        return 0 if ok else 1
    finally:
        codes = [node.process.stop() for node in nodes]
        print(f"spegel demo: nodes stopped (exit codes {codes}); logs in {workdir}")
        if args.workdir is None and all(code == 0 for code in codes):
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
