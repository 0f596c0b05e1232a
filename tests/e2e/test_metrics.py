"""Live figures between real node processes: /metrics moves within a second of a peer
fetch, the provider reports what it advertises, and /debug shows it in a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from spegel_core.oci.image_builder import BuiltImage, build_image
from spegel_core.testing.nodes import NodeProcess, free_loopback_ip
from spegel_core.testing.waiting import until

REF = "docker.io/library/demo:v1"
StartNode = Callable[..., NodeProcess]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

pytestmark = pytest.mark.e2e


def _node(spegel_node: StartNode, ip: str, layout: Path, seed: str) -> NodeProcess:
    layout.mkdir(parents=True, exist_ok=True)
    return spegel_node("--content-store", "oci-layout", "--oci-layout-path", str(layout),
                       "--oci-layout-poll-interval", "200ms", "--router", "kademlia",
                       "--bootstrap-kind", "static", "--static-peers", f"/ip4/{seed}/udp/5001",
                       "--mirror-resolve-timeout", "300ms", ip=ip)


def scrape(node: NodeProcess) -> Samples:
    with urllib.request.urlopen(f"{node.metrics_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _status(url: str, method: str = "HEAD") -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def dump_dom(url: str, profile: Path) -> str:
    """The page as headless Chromium rendered it."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is required (apt-get install chromium; .ci/run installs it)")
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture
def pair(spegel_node: StartNode, tmp_path: Path
         ) -> Iterator[tuple[NodeProcess, NodeProcess, BuiltImage]]:
    ip_a, ip_b = free_loopback_ip(5000), free_loopback_ip(5000)
    image = build_image(tmp_path / "a", REF, layer_sizes=(2 * 2**20, 30_000))
    provider = _node(spegel_node, ip_a, tmp_path / "a", ip_b)
    fetcher = _node(spegel_node, ip_b, tmp_path / "b", ip_a)
    yield provider, fetcher, image


def test_a_peer_fetch_shows_in_metrics_within_a_second_and_on_the_debug_page(
        pair: tuple[NodeProcess, NodeProcess, BuiltImage], tmp_path: Path) -> None:
    provider, fetcher, image = pair
    # The providing node reports what it advertises.
    until(lambda: get(scrape(provider), "spegel_advertised_content_digests", registry="")
          == len(image.blobs), 10, "the provider's advertised content")
    advertised = scrape(provider)
    assert get(advertised, "spegel_advertised_image_tags", registry="docker.io") == 1
    assert get(advertised, "spegel_advertised_image_digests", registry="docker.io") == 1
    assert get(advertised, "spegel_store_connected") == 1
    # The fetcher has found the provider through the DHT (this warms up nothing the
    # fetch below uses: the layer is another key).
    until(lambda: _status(f"{fetcher.url}/v2/library/demo/manifests/v1") == 200, 15,
          "the tag to resolve through the DHT")
    assert get(scrape(fetcher), "spegel_routing_table_peers") >= 1
    before = scrape(fetcher)

    layer = image.layer_digests[0]
    size = image.blob_path(layer).stat().st_size
    with urllib.request.urlopen(f"{fetcher.url}/v2/library/demo/blobs/{layer}",
                                timeout=10) as response:
        assert response.headers["X-Spegel-Source"] == "peer"
        assert len(response.read()) == size

    def moved() -> bool:
        now = scrape(fetcher)
        hit = ("spegel_mirror_requests_total", {"registry": "docker.io", "cache": "hit"})
        resolved = ("spegel_resolve_duration_seconds_count", {"router": "kademlia"})
        return (get(now, hit[0], **hit[1]) == get(before, hit[0], **hit[1]) + 1
                and get(now, "spegel_mirror_bytes_total", source="peer")
                == get(before, "spegel_mirror_bytes_total", source="peer") + size
                and get(now, resolved[0], **resolved[1]) > get(before, resolved[0], **resolved[1])
                and get(now, "spegel_mirror_last_success_timestamp_seconds") > 0)

    # Live figures: counted when the response ends, not at a later export (seconds,
    # not the minutes that made operators think the mirror was broken).
    until(moved, 5.0, "the hit counter, bytes by source and the resolve histogram")
    served = scrape(provider)  # the provider served it from its own store
    assert get(served, "spegel_mirror_bytes_total", source="local") >= size

    html = dump_dom(f"{fetcher.metrics_url}/debug", tmp_path / "chromium")
    node_id = re.search(r'<code id="node-id">([0-9a-f]{64})</code>', html)
    assert node_id, html[:2000]
    assert f"{fetcher.ip}:5000" in html and f"{fetcher.ip}:9090" in html
    assert re.search(r'<span id="peer-count">[1-9]', html)
    row = re.search(rf"<tr>(?:(?!</tr>).)*/v2/library/demo/blobs/{layer}(?:(?!</tr>).)*</tr>",
                    html, re.S)
    assert row, "the fetch is not in the last requests"
    assert '<span class="source">peer</span>' in row.group(0)
    assert "2.0 MiB" in row.group(0)
    assert re.search(r'<span id="hit-ratio">\d+\.\d%</span>', html)
    assert re.search(r'<span id="bytes-peer">2\.0 MiB</span>', html)
    with urllib.request.urlopen(f"{provider.metrics_url}/debug", timeout=5) as response:
        page = response.read().decode()
    assert "<code>docker.io/library/demo:v1</code>" in page
    assert re.search(rf"content digest.*?<td class=\"n\">{len(image.blobs)}</td>", page, re.S)
