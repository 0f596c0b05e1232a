"""``nox -s bench``: the mirror against the Debian docker-registry, interleaved in one run.

Both serve the same blobs (the registry after a ``skopeo copy``, the mirror from an
OCI layout). Ratios lead; absolute figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from spegel_core.oci.image_builder import build_image
from spegel_core.testing.nodes import NodeProcess, free_loopback_ip
from spegel_core.testing.upstream import UpstreamRegistry
from tests.bench.client import RawClient, Timing
from tests.bench.procstat import PeakRss, cpu_seconds, rss_mb

REFERENCE = "docker.io/library/bench:v1"


@dataclass
class Target:
    name: str
    host: str
    port: int
    pid: int
    query: str

    def path(self, kind: str, digest: str) -> str:
        return f"/v2/library/bench/{kind}/{digest}{self.query}"


#: A 404 a peer hop may answer on a loaded machine (a lookup slower than the resolve
#: timeout is a fast "not here", as designed) is retried this many times at most.
MISS_RETRIES = 5


def _get_blob(client: RawClient, target: Target, digest: str, size: int) -> Timing:
    """GET a blob that is there: a 404 (a lookup that timed out) is retried, bounded."""
    for _ in range(MISS_RETRIES):
        timing = client.get(target.path("blobs", digest))
        if timing.status != 404:
            break
        print(f"bench: {target.name} answered 404 (lookup timed out); retrying", flush=True)
    assert timing.status == 200 and timing.bytes == size, (target.name, timing)
    return timing


def _stream(target: Target, digest: str, size: int) -> tuple[float, float]:
    """One fresh-connection GET: (GB/s, server CPU seconds per GB)."""
    client = RawClient(target.host, target.port)
    cpu0 = cpu_seconds(target.pid)
    timing = _get_blob(client, target, digest, size)
    cpu1 = cpu_seconds(target.pid)
    client.close()
    return size / timing.total_s / 1e9, (cpu1 - cpu0) / (size / 1e9)


def _concurrent(target: Target, digest: str, size: int, clients: int,
                per_client: int) -> tuple[float, float, float]:
    """Aggregate GB/s of ``clients`` parallel streams, peak server RSS (MB), and server
    CPU seconds per GB."""
    def worker(_: int) -> int:
        client = RawClient(target.host, target.port)
        total = 0
        for _ in range(per_client):
            total += _get_blob(client, target, digest, size).bytes
        client.close()
        return total

    with PeakRss(target.pid) as peak, ThreadPoolExecutor(clients) as pool:
        cpu0 = cpu_seconds(target.pid) if target.pid else 0.0
        started = time.perf_counter()
        moved = sum(pool.map(worker, range(clients)))
        elapsed = time.perf_counter() - started
        cpu1 = cpu_seconds(target.pid) if target.pid else 0.0
    return moved / elapsed / 1e9, peak.peak, (cpu1 - cpu0) / (moved / 1e9)


def _sha256_rate(data: memoryview) -> tuple[float, float]:
    """One core's sha256 over ``data`` (``hashlib``, as the hop uses it): GB/s, and the
    CPU seconds per GB it took (this thread's CPU time)."""
    import hashlib

    started, cpu = time.perf_counter(), time.thread_time()
    hashlib.sha256(data).digest()
    elapsed, cpu = time.perf_counter() - started, time.thread_time() - cpu
    return len(data) / elapsed / 1e9, cpu / (len(data) / 1e9)


def _ttfb(target: Target, digest: str, samples: int) -> tuple[float, float]:
    client = RawClient(target.host, target.port)
    accept = "application/vnd.oci.image.manifest.v1+json"
    client.get(target.path("manifests", digest), {"Accept": accept})  # warm the connection
    times = []
    for _ in range(samples):
        timing = client.get(target.path("manifests", digest), {"Accept": accept})
        assert timing.status == 200
        times.append(timing.ttfb_s * 1000)
    client.close()
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def _interleaved(targets: list[Target], rounds: int, fn: object) -> dict[str, list[object]]:
    results: dict[str, list[object]] = {t.name: [] for t in targets}
    for r in range(rounds):
        for target in targets if r % 2 == 0 else list(reversed(targets)):
            results[target.name].append(fn(target))  # type: ignore[operator]
    return results


def run(args: argparse.Namespace) -> dict[str, object]:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="spegel-bench-"))
    layout = workdir / "layout"
    layout.mkdir(parents=True, exist_ok=True)
    big, small = int(args.blob_mib * 2**20), int(args.small_mib * 2**20)
    only_peer = bool(getattr(args, "only_peer", False))
    print(f"bench: building blobs of {args.blob_mib:g} and {args.small_mib:g} MiB", flush=True)
    image = build_image(layout, REFERENCE, platforms=(("linux", "amd64"),),
                        layer_sizes=(big, small), raw_layers=True, seed=7)
    big_digest, small_digest = image.layer_digests[0], image.layer_digests[1]
    manifest_digest = image.manifest_digests[0]
    upstream = UpstreamRegistry(workdir / "upstream", port=args.registry_port or _free_port())
    node_ip, peer_ip = free_loopback_ip(5000), free_loopback_ip(5000)
    node = NodeProcess(node_ip, 5000,
                       ["--content-store", "oci-layout", "--oci-layout-path", str(layout),
                        "--log-level", "WARNING"], workdir / "node.log")
    empty = workdir / "empty"
    empty.mkdir(exist_ok=True)
    peer_args = ["--content-store", "oci-layout", "--bootstrap-kind", "static",
                 "--static-peers", f"/ip4/{node_ip}/udp/5001", "--log-level", "WARNING"]
    peer_node = NodeProcess(peer_ip, 5000, [*peer_args, "--oci-layout-path", str(empty),
                                            "--peer-blob-verify", "mirror"],
                            workdir / "peer-node.log")
    # The same hop with the client verifying blobs: bodies relayed socket to socket.
    empty_too = workdir / "empty-client"
    empty_too.mkdir(exist_ok=True)
    client_node = NodeProcess(free_loopback_ip(5000), 5000,
                              [*peer_args, "--oci-layout-path", str(empty_too),
                               "--peer-blob-verify", "client"], workdir / "client-node.log")
    try:
        upstream.start()
        print("bench: uploading the same blobs to docker-registry", flush=True)
        for digest in [*image.layer_digests, *image.config_digests]:
            upstream.push_blob_file("library/bench", _blob_path(layout, digest), digest)
        for digest in [*image.manifest_digests, image.index_digest]:
            upstream.put_manifest("library/bench", digest, _blob_path(layout, digest).read_bytes(),
                                  image.media_types[digest])
        node.start()
        node.wait_ready()
        peer_node.start()
        client_node.start()
        peer_node.wait_ready()
        client_node.wait_ready()
        assert upstream.process is not None and node.process is not None
        assert peer_node.process is not None and client_node.process is not None
        targets = [
            Target("spegel", node.ip, node.port, node.process.pid, "?ns=docker.io"),
            Target("registry", upstream.host, upstream.port, upstream.process.pid, ""),
        ]
        for target in targets:  # warm page cache and code paths
            _stream(target, small_digest, small)
            _stream(target, big_digest, big)
        time.sleep(0.5)
        idle = {t.name: rss_mb(t.pid) for t in targets}
        if not only_peer:
            print("bench: single stream, big blob", flush=True)
            single_big = _interleaved(targets, args.rounds,
                                      lambda t: _stream(t, big_digest, big))
            print("bench: single stream, small blob", flush=True)
            single_small = _interleaved(targets, args.rounds,
                                        lambda t: _stream(t, small_digest, small))
            print(f"bench: {args.clients} concurrent clients", flush=True)
            concurrent = _interleaved(targets, args.rounds, lambda t: _concurrent(
                t, small_digest, small, args.clients, args.per_client))
            print("bench: manifest time to first byte", flush=True)
            ttfb = _interleaved(targets, 1, lambda t: _ttfb(t, manifest_digest, args.samples))
        via = Target("peer hop", peer_node.ip, peer_node.port, peer_node.process.pid,
                     "?ns=docker.io")
        via_client = Target("peer hop, client verifies", client_node.ip, client_node.port,
                            client_node.process.pid, "?ns=docker.io")
        _wait_found(via, big_digest)
        _wait_found(via_client, big_digest)
        _wait_found(via, small_digest)
        _wait_found(via_client, small_digest)
        print("bench: through a peer (node B fetching from node A), both verify modes, "
              "against the registry direct and one core's sha256", flush=True)
        # The hashing ceiling, measured in the same rounds: sha256 over the same bytes.
        big_bytes = memoryview(_blob_path(layout, big_digest).read_bytes())
        small_bytes = memoryview(_blob_path(layout, small_digest).read_bytes())
        hashing = Target("sha256", "", 0, 0, "")
        peer_targets = [via, via_client, targets[1], hashing]
        peer_big = _interleaved(peer_targets, args.rounds, lambda t: (
            _sha256_rate(big_bytes) if t is hashing else _stream(t, big_digest, big)))
        peer_concurrent = _interleaved(peer_targets, args.rounds, lambda t: (
            (*_sha256_rate(small_bytes), 0.0) if t is hashing else _concurrent(
                t, small_digest, small, args.clients, args.per_client)))
        peer_ttfb = _ttfb(via, manifest_digest, args.samples)
        misses = _misses(via, args.samples)
        if not only_peer:
            store_big = _containerd_vs_layout(args, workdir, layout, targets[0], big_digest,
                                              big)
    finally:
        client_node.stop()
        peer_node.stop()
        node.stop()
        upstream.stop()

    def med(values: list[object], index: int) -> float:
        return float(statistics.median(v[index] for v in values))  # type: ignore[index]

    results: dict[str, object] = {"machine": _machine(), "blob_mib": args.blob_mib,
                                  "small_mib": args.small_mib, "rounds": args.rounds,
                                  "clients": args.clients, "load": _load()}
    if not only_peer:
        for name in ("spegel", "registry"):
            results[name] = {
                "single_big_gbps": med(single_big[name], 0),
                "single_big_cpu_s_per_gb": med(single_big[name], 1),
                "single_small_gbps": med(single_small[name], 0),
                "concurrent_gbps": med(concurrent[name], 0),
                "loaded_rss_mb": max(v[1] for v in concurrent[name]),  # type: ignore[index]
                "idle_rss_mb": idle[name],
                "ttfb_p50_ms": ttfb[name][0][0],  # type: ignore[index]
                "ttfb_p99_ms": ttfb[name][0][1],  # type: ignore[index]
            }
        results["stores"] = {"oci_layout_gbps": med(store_big["spegel"], 0),
                             "containerd_gbps": med(store_big["containerd"], 0)}
    results["peer"] = {
        "peer_big_gbps": med(peer_big["peer hop"], 0),
        "peer_big_cpu_s_per_gb": med(peer_big["peer hop"], 1),
        "client_big_gbps": med(peer_big["peer hop, client verifies"], 0),
        "client_big_cpu_s_per_gb": med(peer_big["peer hop, client verifies"], 1),
        "registry_big_gbps": med(peer_big["registry"], 0),
        "sha256_big_gbps": med(peer_big["sha256"], 0),
        "sha256_cpu_s_per_gb": med(peer_big["sha256"], 1),
        "peer_concurrent_gbps": med(peer_concurrent["peer hop"], 0),
        "peer_concurrent_cpu_s_per_gb": med(peer_concurrent["peer hop"], 2),
        "client_concurrent_gbps": med(peer_concurrent["peer hop, client verifies"], 0),
        "client_concurrent_cpu_s_per_gb": med(peer_concurrent["peer hop, client verifies"], 2),
        "registry_concurrent_gbps": med(peer_concurrent["registry"], 0),
        "sha256_small_gbps": med(peer_concurrent["sha256"], 0),
        "peer_manifest_ttfb_p50_ms": peer_ttfb[0],
        "peer_manifest_ttfb_p99_ms": peer_ttfb[1],
        "miss_p50_ms": misses[0],
        "miss_max_ms": misses[1],
    }
    return results


def _load() -> str:
    """The 1, 5 and 15 minute load averages at the end of the run (a busy machine shows)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _containerd_vs_layout(args: argparse.Namespace, workdir: Path, layout: Path,
                          layout_target: Target, digest: str, size: int
                          ) -> dict[str, list[object]]:
    """The same blob served from containerd's content directory and from the OCI layout."""
    from spegel_core.testing.containerd import import_layout, registry_args, temporary_daemon

    print("bench: containerd store against the OCI-layout store", flush=True)
    with temporary_daemon() as daemon:
        import_layout(daemon, layout, unpack=False)
        node = NodeProcess(free_loopback_ip(5000), 5000,
                           [*registry_args(daemon), "--router", "none", "--log-level", "WARNING"],
                           workdir / "containerd-node.log")
        node.start()
        try:
            node.wait_ready()
            assert node.process is not None
            target = Target("containerd", node.ip, node.port, node.process.pid, "?ns=docker.io")
            _stream(target, digest, size)
            return _interleaved([layout_target, target], args.rounds,
                                lambda t: _stream(t, digest, size))
        finally:
            node.stop()


def _wait_found(target: Target, digest: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        client = RawClient(target.host, target.port)
        try:
            if client.get(target.path("blobs", digest)).status == 200:
                return
        finally:
            client.close()
        time.sleep(0.1)
    raise TimeoutError(f"{target.name} never found {digest}")


def _misses(target: Target, samples: int) -> tuple[float, float]:
    """"Not here": 404 latency for digests nobody holds (lookup + answer), ms."""
    client = RawClient(target.host, target.port)
    times = []
    for index in range(samples):
        timing = client.get(target.path("blobs", f"sha256:{index + 1:064x}"))
        assert timing.status == 404
        times.append(timing.total_s * 1000)
    client.close()
    return statistics.median(times), max(times)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _blob_path(layout: Path, digest: str) -> Path:
    algorithm, _, encoded = digest.partition(":")
    return layout / "blobs" / algorithm / encoded


def _machine() -> str:
    cpu = "unknown cpu"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores, {cpu}, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


ROWS = [
    ("single_big_gbps", "GB/s, one stream, {blob_mib:g} MiB blob", True),
    ("single_small_gbps", "GB/s, one stream, {small_mib:g} MiB blob", True),
    ("concurrent_gbps", "GB/s, {clients} concurrent clients, {small_mib:g} MiB blob", True),
    ("single_big_cpu_s_per_gb", "server CPU seconds per GB (one stream)", False),
    ("ttfb_p50_ms", "manifest time to first byte, median (ms)", False),
    ("ttfb_p99_ms", "manifest time to first byte, p99 (ms)", False),
    ("idle_rss_mb", "RSS idle (MB)", False),
    ("loaded_rss_mb", "RSS peak under concurrent load (MB)", False),
]


def table(results: dict[str, object]) -> str:
    spegel, registry = results["spegel"], results["registry"]
    assert isinstance(spegel, dict) and isinstance(registry, dict)
    lines = ["| measure | spegel | docker-registry | spegel / registry |",
             "|---|---:|---:|---:|"]
    for key, label, _higher_better in ROWS:
        a, b = spegel[key], registry[key]
        ratio = a / b if b else float("nan")
        lines.append(f"| {label.format(**results)} | {a:.2f} | {b:.2f} | {ratio:.2f}x |")
    return "\n".join(lines)


def peer_table(results: dict[str, object]) -> str:
    peer = results["peer"]
    assert isinstance(peer, dict)
    sha_big, sha_small = peer["sha256_big_gbps"], peer["sha256_small_gbps"]
    blob, small, clients = results["blob_mib"], results["small_mib"], results["clients"]
    rows = []
    for mode, key in (("mirror", "peer"), ("client", "client")):
        big = peer[f"{key}_big_gbps"] / peer["registry_big_gbps"]
        many = peer[f"{key}_concurrent_gbps"] / peer["registry_concurrent_gbps"]
        rows += [
            f"| GB/s, one stream, {blob:g} MiB layer, `{mode}` verifies "
            f"| {peer[f'{key}_big_gbps']:.2f} | {peer['registry_big_gbps']:.2f} | {big:.2f}x "
            f"| {peer[f'{key}_big_gbps'] / sha_big:.2f}x |",
            f"| GB/s, {clients} concurrent clients, {small:g} MiB "
            f"blob, `{mode}` verifies | {peer[f'{key}_concurrent_gbps']:.2f} "
            f"| {peer['registry_concurrent_gbps']:.2f} | {many:.2f}x "
            f"| {peer[f'{key}_concurrent_gbps'] / sha_small:.2f}x |",
        ]
    cpu = [f"| peer-hop node CPU seconds per GB, {what}, `{mode}` verifies "
           f"| {peer[f'{key}_{kind}_cpu_s_per_gb']:.2f} | | | |"
           for mode, key in (("mirror", "peer"), ("client", "client"))
           for what, kind in (("one stream", "big"), (f"{clients} clients", "concurrent"))]
    lines = [
        "| measure (`--peer-blob-verify`) | through a peer | docker-registry direct "
        "| ratio | ratio to one core's sha256 |",
        "|---|---:|---:|---:|---:|",
        f"| one core's sha256 (`hashlib`) over the {blob:g} MiB layer, GB/s | {sha_big:.2f} "
        "| | | 1.00x |",
        f"| one core's sha256 over the {small:g} MiB blob, GB/s | {sha_small:.2f} | | "
        "| 1.00x |",
        f"| CPU seconds per GB of sha256 itself (one core, `hashlib`) "
        f"| {peer['sha256_cpu_s_per_gb']:.2f} | | | |",
        *rows,
        *cpu,
        "",
        "| latency | median (ms) | p99 / max (ms) |",
        "|---|---:|---:|",
        f"| manifest through a peer, lookup cached (TTFB) | "
        f"{peer['peer_manifest_ttfb_p50_ms']:.2f} | {peer['peer_manifest_ttfb_p99_ms']:.2f} |",
        f"| \"not here\" 404 (lookup finds nobody) | {peer['miss_p50_ms']:.2f} "
        f"| {peer['miss_max_ms']:.2f} |",
    ]
    stores = results.get("stores")
    if isinstance(stores, dict):
        lines += [
            "",
            "| store (same blob, one stream) | GB/s | ratio to the OCI layout |",
            "|---|---:|---:|",
            f"| OCI layout | {stores['oci_layout_gbps']:.2f} | 1.00x |",
            f"| containerd content directory | {stores['containerd_gbps']:.2f} "
            f"| {stores['containerd_gbps'] / stores['oci_layout_gbps']:.2f}x |",
        ]
    return "\n".join(lines)


def write_doc(path: Path, results: dict[str, object], command: str,
              name: str = "local") -> None:
    """Replace the section ``name`` of ``path`` (between markers) with this run's tables."""
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    local = (f"### Local serving\n\n{table(results)}\n\n" if "spegel" in results else "")
    section = (f"{begin}\nMeasured {time.strftime('%Y-%m-%d')} on {results['machine']}; "
               f"medians of {results['rounds']} interleaved rounds; load average "
               f"{results.get('load', 'unknown')} at the end.\n\n"
               f"Command: `{command}`\n\n{local}"
               f"### The peer hop, misses and stores\n\n{peer_table(results)}\n{end}")
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        title = "Latest run" if name == "local" else f"Run: {name}"
        text = text.rstrip() + f"\n\n## {title}\n\n" + section + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blob-mib", type=float, default=512)
    parser.add_argument("--small-mib", type=float, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--per-client", type=int, default=2)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--only-peer", action="store_true",
                        help="Only the peer hop, sha256, misses (no local serving, no stores).")
    parser.add_argument("--registry-port", type=int, default=0, help="0: any free port")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--write", type=Path, default=None,
                        help="Update this markdown file (e.g. docs/benchmarks.md).")
    parser.add_argument("--section", default="local",
                        help="Name of the section of --write this run replaces.")
    args = parser.parse_args(argv)
    results = run(args)
    if "spegel" in results:
        print(table(results))
        print()
    print(peer_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.write:
        write_doc(args.write, results, "nox -s bench -- " + " ".join(argv or sys.argv[1:]),
                  args.section)
        print(f"bench: wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
