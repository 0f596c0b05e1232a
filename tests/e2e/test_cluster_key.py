"""``--cluster-key-file`` with real node processes: the wrong key, or none, gets nowhere."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from spegel_core.oci.image_builder import build_image
from spegel_core.testing.nodes import NodeProcess, free_loopback_ip

StartNode = Callable[..., NodeProcess]
pytestmark = pytest.mark.e2e

KEY = b"c3BlZ2VsLWNsdXN0ZXIta2V5LXRlc3QtMDAwMDAwMDA=\n"  # base64 text, as a Secret holds
NEXT = b"dGhlLW5leHQtY2x1c3Rlci1rZXktYWZ0ZXItcm90YXRpb24=\n"
OTHER = b"YW5vdGhlci1jbHVzdGVyLWtleS0wMDAwMDAwMDAwMDA=\n"


def head_status(url: str) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def dropped_by_reason(node: NodeProcess) -> dict[str, float]:
    """``spegel_dht_dropped_datagrams_total`` of ``node``, by reason label."""
    with urllib.request.urlopen(f"{node.metrics_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith('spegel_dht_dropped_datagrams_total{reason="'):
            reason = line.split('"')[1]
            found[reason] = float(line.rsplit(" ", 1)[1])
    return found


def router_peers(node: NodeProcess) -> int:
    with urllib.request.urlopen(f"{node.url}/readyz", timeout=5) as response:
        return int(json.loads(response.read())["router"]["peers"])


def test_only_nodes_with_the_key_form_the_cluster(spegel_node: StartNode,
                                                  tmp_path: Path) -> None:
    image = build_image(tmp_path / "a", "docker.io/library/demo:v1", layer_sizes=(2000,))
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "key").write_bytes(KEY)
    (keys / "rotating").write_bytes(KEY + NEXT)  # roll 1 of a rotation: old key signs
    (keys / "other").write_bytes(OTHER)
    ips = [free_loopback_ip() for _ in range(4)]
    peers = ",".join(f"/ip4/{ip}/udp/5001" for ip in ips)

    def start(ip: str, layout: Path, *key: str) -> NodeProcess:
        layout.mkdir(exist_ok=True)
        return spegel_node("--content-store", "oci-layout", "--oci-layout-path", str(layout),
                           "--router", "kademlia", "--bootstrap-kind", "static",
                           "--static-peers", peers, "--mirror-resolve-timeout", "300ms",
                           "--kademlia-bootstrap-backoff-max", "500ms", *key, ip=ip, wait=False)

    holder = start(ips[0], tmp_path / "a", "--cluster-key-file", str(keys / "key"))
    member = start(ips[1], tmp_path / "b", "--cluster-key-file", str(keys / "rotating"))
    stranger = start(ips[2], tmp_path / "c", "--cluster-key-file", str(keys / "other"))
    keyless = start(ips[3], tmp_path / "d")
    for node in (holder, member, stranger, keyless):
        node.wait_ready()
    url = "{}/v2/library/demo/blobs/" + image.layer_digests[0]
    deadline = time.monotonic() + 15
    while head_status(url.format(member.url)) != 200:
        assert time.monotonic() < deadline, "the member never found the holder's content"
        time.sleep(0.1)
    # "Nothing happened" against the signal that would have fired: the holder has
    # refused at least two bootstrap rounds from each outsider (a bad MAC from the
    # stranger, no trailer from the keyless node) before we look at what they found.
    deadline = time.monotonic() + 15
    while True:
        counts = sorted(dropped_by_reason(holder).values())
        if len(counts) >= 2 and counts[-2] >= 2:  # two reasons, each seen twice or more
            break
        assert time.monotonic() < deadline, f"outsiders never refused: {dropped_by_reason(holder)}"
        time.sleep(0.1)
    assert head_status(url.format(stranger.url)) == 404
    assert head_status(url.format(keyless.url)) == 404
    assert (router_peers(holder), router_peers(member)) == (1, 1)
    assert (router_peers(stranger), router_peers(keyless)) == (0, 0)
    assert "the DHT runs open" in keyless.log()
    assert "the DHT runs open" not in holder.log()


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read"),
    (b"too-short\n", "at least 16"),
])
def test_a_bad_key_file_stops_the_node_with_one_line(tmp_path: Path, content: bytes | None,
                                                     message: str) -> None:
    path = tmp_path / "key"
    if content is not None:
        path.write_bytes(content)
    ip = free_loopback_ip()
    result = subprocess.run(
        [sys.executable, "-m", "spegel_core.cli.main", "registry", "--content-store",
         "oci-layout", "--oci-layout-path", str(tmp_path), "--router", "kademlia",
         "--registry-addr", f"{ip}:5000", "--router-addr", f"{ip}:5001",
         "--metrics-addr", f"{ip}:9090", "--cluster-key-file", str(path)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]  # after the start-up log lines
    assert last.startswith("spegel: error: --cluster-key-file: ") and message in last, last
    assert "Traceback" not in result.stderr
