"""Many concurrent clients against one real node: throughput, latency and errors.

``python -m tests.bench.load [--clients 1000] [--addresses 50] [--seconds 20]``
(or ``nox -s load -- ...``) starts a ``spegel registry`` process on a free loopback
address, serving an OCI layout with a few 1 MiB layers (``--router none``: the local
path under load), then runs ``--clients`` clients at once, each with its own keep-alive
connection bound to one of ``--addresses`` loopback source addresses (as many pods
would), each in a loop: a HEAD of the tag, a GET of the index by digest, a GET of one
1 MiB layer. It stops by itself after ``--seconds`` (and at most ``--max-requests`` per
client) and prints requests per second, MiB/s, latency p50/p99 and errors (any status
other than 200, a wrong length, a connection that failed). Errors are bounded: a
client that fails reconnects once per request and gives up after 3 failures in a row.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from spegel_core.oci.image_builder import BuiltImage, build_image
from spegel_core.testing.nodes import NodeProcess, free_loopback_ip

REFERENCE = "docker.io/library/load:v1"
#: Source addresses of the clients (away from the tests' 127.0-5 and the scale runs).
_SOURCE = "127.0.{}.{}"
_SOURCE_BASE = 70


@dataclass
class LoadResult:
    """The figures of one run."""

    clients: int
    addresses: int
    seconds: float
    requests: int
    errors: int
    requests_per_s: float
    mib_per_s: float
    p50_ms: float
    p99_ms: float
    error_kinds: dict[str, int]

    def __str__(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.error_kinds.items())) or "none"
        return (f"{self.clients} clients from {self.addresses} addresses, {self.seconds:.1f} s: "
                f"{self.requests} requests, {self.requests_per_s:.0f} req/s, "
                f"{self.mib_per_s:.0f} MiB/s, p50 {self.p50_ms:.1f} ms, "
                f"p99 {self.p99_ms:.1f} ms, errors {self.errors} ({kinds})")


def source_address(index: int, addresses: int) -> str:
    """The loopback source address of client ``index``."""
    n = index % addresses
    return _SOURCE.format(_SOURCE_BASE + n // 250, 1 + n % 250)


class _Client:
    def __init__(self, host: str, port: int, source: str) -> None:
        self.host, self.port, self.source = host, port, source
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str) -> tuple[int, int]:
        """One request on the kept-alive connection: (status, body bytes)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(
                self.host, self.port, local_addr=(self.source, 0), limit=1 << 20)
        assert self.reader is not None
        self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
        if method == "HEAD":
            return status, 0
        remaining = length
        while remaining:
            chunk = await self.reader.read(min(remaining, 1 << 20))
            if not chunk:
                raise ConnectionError("body cut short")
            remaining -= len(chunk)
        return status, length

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run_load(host: str, port: int, image: BuiltImage, *, clients: int, addresses: int,
                   seconds: float, max_requests: int, seed: int = 1) -> LoadResult:
    """Run the clients against ``host:port`` until ``seconds`` pass; the figures."""
    name = REFERENCE.split("/", 1)[1].rsplit(":", 1)[0]
    steps = [("HEAD", f"/v2/{name}/manifests/v1", None),
             ("GET", f"/v2/{name}/manifests/{image.index_digest}",
              image.blobs[image.index_digest])]
    steps += [("GET", f"/v2/{name}/blobs/{layer}", image.blobs[layer])
              for layer in image.layer_digests]
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    moved = 0
    stop_at = time.monotonic() + seconds
    rng = random.Random(seed)

    async def client(index: int) -> None:
        nonlocal moved
        conn = _Client(host, port, source_address(index, addresses))
        order = [*steps[:2], rng.choice(steps[2:])]
        failures = 0
        try:
            for n in range(max_requests):
                if time.monotonic() >= stop_at or failures >= 3:
                    return
                method, path, size = order[n % len(order)]
                started = time.perf_counter()
                try:
                    status, length = await asyncio.wait_for(conn.request(method, path), 30)
                except (OSError, ConnectionError, asyncio.IncompleteReadError,
                        TimeoutError, ValueError) as exc:
                    errors[type(exc).__name__] += 1
                    failures += 1
                    conn.close()
                    continue
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    errors[f"HTTP {status}"] += 1
                    failures += 1
                elif size is not None and length != size:
                    errors["wrong length"] += 1
                    failures += 1
                else:
                    failures = 0
                    moved += length
        finally:
            conn.close()

    began = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(clients)))
    took = time.monotonic() - began
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else 0.0
    requests = len(latencies) + sum(v for k, v in errors.items() if not k.startswith("HTTP"))
    return LoadResult(
        clients=clients, addresses=addresses, seconds=took, requests=requests,
        errors=sum(errors.values()), requests_per_s=len(latencies) / took,
        mib_per_s=moved / took / 2**20,
        p50_ms=1000 * (statistics.median(latencies) if latencies else 0.0),
        p99_ms=1000 * p99, error_kinds=dict(errors))


def serve_image(workdir: Path, layers: int, layer_mib: int) -> tuple[NodeProcess, BuiltImage]:
    """A node serving an image of ``layers`` layers of ``layer_mib`` MiB (started, ready)."""
    image = build_image(workdir / "layout", REFERENCE, platforms=(("linux", "amd64"),),
                        layer_sizes=(layer_mib * 2**20,) * layers, raw_layers=True, seed=5)
    node = NodeProcess(free_loopback_ip(5000), 5000,
                       ["--content-store", "oci-layout", "--oci-layout-path",
                        str(image.layout_dir), "--router", "none",
                        "--mirror-max-client-connections", "256"],
                       workdir / "node.log").start()
    try:
        node.wait_ready()
    except BaseException:
        node.stop()
        raise
    return node, image


def _open_files(clients: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < clients + 256 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    elif soft < clients + 256:
        raise SystemExit(f"--clients {clients} needs an open-file limit above {clients + 256} "
                         f"(ulimit -n is {soft})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nox -s load --", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--addresses", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-requests", type=int, default=100_000,
                        help="most requests per client")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--layer-mib", type=int, default=1)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    for flag in ("clients", "addresses", "layers", "layer_mib", "max_requests"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    if not 0 < args.seconds <= 600:
        parser.error("--seconds must be in (0, 600]")
    if args.addresses > 500:
        parser.error("--addresses must be at most 500")
    _open_files(args.clients)
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        loop_factory = asyncio.new_event_loop
    with tempfile.TemporaryDirectory(prefix="spegel-load-") as workdir:
        node, image = serve_image(Path(workdir), args.layers, args.layer_mib)
        try:
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                result = runner.run(run_load(
                    node.ip, node.port, image, clients=args.clients, addresses=args.addresses,
                    seconds=args.seconds, max_requests=args.max_requests))
        finally:
            node.stop()
    print(result)
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(result), indent=2) + "\n")
    return 0 if result.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
