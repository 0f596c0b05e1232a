"""``nox -s soak``: memory over a long, bounded run of mixed requests against two nodes.

Node A holds an image; nodes B (``--peer-blob-verify mirror``, the default) and C
(``client``) fetch it from A. A fixed mix of requests runs in a loop for ``--minutes``
(manifests by tag and digest, full and ranged blobs, misses, peer hops) while the RSS
and thread count of every node is sampled. Growth after the warm-up is what a leak
would show; growth in the second half of the run tells a plateau from a slope.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from spegel_core.oci.image_builder import build_image
from spegel_core.testing.nodes import NodeProcess, free_loopback_ip
from tests.bench.client import RawClient
from tests.bench.procstat import rss_mb, threads


def soak(minutes: float, workdir: Path, max_requests: int) -> dict[str, object]:
    layout, empty = workdir / "layout", workdir / "empty"
    layout.mkdir(parents=True, exist_ok=True)
    empty.mkdir(exist_ok=True)
    image = build_image(layout, "docker.io/library/soak:v1", layer_sizes=(8 * 2**20, 50_000))
    ip_a, ip_b, ip_c = free_loopback_ip(), free_loopback_ip(), free_loopback_ip()
    a = NodeProcess(ip_a, 5000, ["--content-store", "oci-layout", "--oci-layout-path",
                                 str(layout), "--log-level", "WARNING"], workdir / "a.log")
    peer_args = ["--content-store", "oci-layout", "--bootstrap-kind", "static",
                 "--static-peers", f"/ip4/{ip_a}/udp/5001", "--log-level", "WARNING"]
    b = NodeProcess(ip_b, 5000, [*peer_args, "--oci-layout-path", str(empty)],
                    workdir / "b.log")
    (workdir / "empty-c").mkdir(exist_ok=True)
    c = NodeProcess(ip_c, 5000, [*peer_args, "--oci-layout-path", str(workdir / "empty-c"),
                                 "--peer-blob-verify", "client"], workdir / "c.log")
    nodes = {"a": a, "b": b, "c": c}
    samples: list[dict[str, float]] = []
    requests = 0
    unexpected: Counter[str] = Counter()
    try:
        for node in nodes.values():
            node.start()
        for node in nodes.values():
            node.wait_ready()
        pids = {}
        for name, node in nodes.items():
            assert node.process is not None
            pids[name] = node.process.pid
        paths = ["/v2/library/soak/manifests/v1?ns=docker.io",
                 *(f"/v2/library/soak/manifests/{d}" for d in image.manifest_digests),
                 *(f"/v2/library/soak/blobs/{d}" for d in image.layer_digests),
                 f"/v2/library/soak/blobs/sha256:{'7' * 64}"]
        miss = paths[-1]
        for node in (b, c):  # until the peers found A (the DHT joins in the background)
            deadline = time.monotonic() + 20
            while _status(node, paths[0]) != 200:
                assert time.monotonic() < deadline, f"{node.url} never found the image"
                time.sleep(0.1)
        ranged = {"Range": "bytes=1000-200000"}
        started = time.monotonic()
        next_sample = started
        while time.monotonic() - started < minutes * 60 and requests < max_requests:
            for name, node in nodes.items():
                client = RawClient(node.ip, node.port)
                for path in paths:
                    status = client.get(path).status
                    if status != (404 if path == miss else 200):
                        unexpected[f"{name} {path.split('?')[0][-20:]} {status}"] += 1
                    requests += 1
                timing = client.get(f"/v2/library/soak/blobs/{image.layer_digests[0]}", ranged)
                if timing.status != 206:
                    unexpected[f"{name} ranged {timing.status}"] += 1
                requests += 1
                client.close()
            if time.monotonic() >= next_sample:
                sample = {"t": time.monotonic() - started, "requests": requests}
                for name, pid in pids.items():
                    sample[f"rss_{name}"] = rss_mb(pid)
                    sample[f"threads_{name}"] = threads(pid)
                samples.append(sample)
                next_sample += 10
    finally:
        for node in reversed(nodes.values()):
            node.stop()
    warm = [s for s in samples if s["t"] >= 60] or samples
    half = [s for s in warm if s["t"] >= (warm[0]["t"] + samples[-1]["t"]) / 2] or warm
    last = samples[-1]
    return {
        "minutes": minutes, "requests": requests, "unexpected_status": sum(unexpected.values()),
        "unexpected_by_request": dict(unexpected),
        **{f"rss_{n}_mb": {"first": samples[0][f"rss_{n}"], "after_warmup": warm[0][f"rss_{n}"],
                           "last": last[f"rss_{n}"], "max": max(s[f"rss_{n}"] for s in samples)}
           for n in nodes},
        "growth_after_warmup_mb": {n: last[f"rss_{n}"] - warm[0][f"rss_{n}"] for n in nodes},
        "growth_second_half_mb": {n: last[f"rss_{n}"] - half[0][f"rss_{n}"] for n in nodes},
        "threads_last": {n: last[f"threads_{n}"] for n in nodes},
        "samples": samples,
    }


def _status(node: NodeProcess, path: str) -> int:
    client = RawClient(node.ip, node.port)
    try:
        return client.get(path).status
    finally:
        client.close()


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
