"""``nox -s soak``: memory over a long, bounded run of mixed requests against two nodes.

Node A holds an image; node B fetches it from A. A fixed mix of requests runs in a
loop for ``--minutes`` (manifests by tag and digest, full and ranged blobs, misses,
peer hops) while the RSS of both nodes is sampled. Growth after the warm-up is what
a leak would show.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from spegel_core.oci.image_builder import build_image
from spegel_core.testing.nodes import NodeProcess, free_loopback_ip
from tests.bench.client import RawClient
from tests.bench.procstat import rss_mb


def soak(minutes: float, workdir: Path, max_requests: int) -> dict[str, object]:
    layout, empty = workdir / "layout", workdir / "empty"
    layout.mkdir(parents=True, exist_ok=True)
    empty.mkdir(exist_ok=True)
    image = build_image(layout, "docker.io/library/soak:v1", layer_sizes=(8 * 2**20, 50_000))
    ip_a, ip_b = free_loopback_ip(), free_loopback_ip()
    a = NodeProcess(ip_a, 5000, ["--content-store", "oci-layout", "--oci-layout-path",
                                 str(layout), "--log-level", "WARNING"], workdir / "a.log")
    b = NodeProcess(ip_b, 5000, ["--content-store", "oci-layout", "--oci-layout-path",
                                 str(empty), "--bootstrap-kind", "static", "--static-peers",
                                 f"/ip4/{ip_a}/udp/5001", "--log-level", "WARNING"],
                    workdir / "b.log")
    samples: list[tuple[float, float, float]] = []
    requests = 0
    try:
        a.start().wait_ready()
        b.start().wait_ready()
        assert a.process is not None and b.process is not None
        paths = ["/v2/library/soak/manifests/v1?ns=docker.io",
                 *(f"/v2/library/soak/manifests/{d}" for d in image.manifest_digests),
                 *(f"/v2/library/soak/blobs/{d}" for d in image.layer_digests),
                 f"/v2/library/soak/blobs/sha256:{'7' * 64}"]
        ranged = {"Range": "bytes=1000-200000"}
        started = time.monotonic()
        next_sample = started
        while time.monotonic() - started < minutes * 60 and requests < max_requests:
            for node in (a, b):
                client = RawClient(node.ip, node.port)
                for path in paths:
                    client.get(path)
                    requests += 1
                client.get(f"/v2/library/soak/blobs/{image.layer_digests[0]}", ranged)
                requests += 1
                client.close()
            if time.monotonic() >= next_sample:
                samples.append((time.monotonic() - started, rss_mb(a.process.pid),
                                rss_mb(b.process.pid)))
                next_sample += 10
    finally:
        b.stop()
        a.stop()
    warm = [s for s in samples if s[0] >= 60] or samples
    return {
        "minutes": minutes, "requests": requests,
        "rss_a_mb": {"first": samples[0][1], "after_warmup": warm[0][1], "last": samples[-1][1]},
        "rss_b_mb": {"first": samples[0][2], "after_warmup": warm[0][2], "last": samples[-1][2]},
        "growth_after_warmup_mb": {"a": samples[-1][1] - warm[0][1],
                                   "b": samples[-1][2] - warm[0][2]},
        "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--max-requests", type=int, default=2_000_000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="spegel-soak-") as workdir:
        result = soak(args.minutes, Path(workdir), args.max_requests)
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
