"""The Go original's semantics on real nodes: registry filters, OCI-Namespace, basic auth.

Two real ``spegel registry`` processes on loopback addresses, a real Kademlia DHT
between them, an OCI layout store on the first.
"""

from __future__ import annotations

import base64
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from spegel_core.oci.image_builder import build_image
from spegel_core.testing.nodes import NodeProcess, free_loopback_ip

StartNode = Callable[..., NodeProcess]
DEMO = "docker.io/library/demo:v1"
PRIVATE = "docker.io/private/app:v1"
FILTER = r"^docker\.io/private/"

pytestmark = pytest.mark.e2e


def _request(url: str, method: str = "GET",
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return (response.status, {k.lower(): v for k, v in response.headers.items()},
                    response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def _wait_status(url: str, status: int, headers: dict[str, str] | None = None,
                 timeout: float = 15.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        got, response_headers, _ = _request(url, "HEAD", headers)
        if got == status:
            return response_headers
        assert time.monotonic() < deadline, f"{url} still {got}"
        time.sleep(0.1)


def _node(spegel_node: StartNode, ip: str, layout: Path, seeds: list[str],
          *extra: str) -> NodeProcess:
    layout.mkdir(parents=True, exist_ok=True)
    return spegel_node("--content-store", "oci-layout", "--oci-layout-path", str(layout),
                       "--oci-layout-poll-interval", "200ms", "--router", "kademlia",
                       "--bootstrap-kind", "static",
                       "--static-peers", *[f"/ip4/{seed}/udp/5001" for seed in seeds],
                       "--mirror-resolve-timeout", "300ms", *extra, ip=ip)


def _advertised_content(node: NodeProcess) -> float | None:
    _, _, body = _request(f"{node.metrics_url}/metrics")
    match = re.search(rb"^spegel_advertised_content_digests(?:\{[^}]*\})? (\S+)$", body,
                      re.MULTILINE)
    return float(match[1]) if match else None


def test_registry_filters_apply_to_every_request_and_to_what_is_advertised(
        spegel_node: StartNode, tmp_path: Path) -> None:
    ips = [free_loopback_ip(5000) for _ in range(2)]
    layout = tmp_path / "a"
    demo = build_image(layout, DEMO, layer_sizes=(50_000,))
    private = build_image(layout, PRIVATE, layer_sizes=(60_000,), seed=7)
    a = _node(spegel_node, ips[0], layout, ips[1:], "--registry-filters", FILTER, "^x{1,2}$")
    b = _node(spegel_node, ips[1], tmp_path / "b", ips[:1], "--registry-filters", FILTER)

    # Local: the filtered image is not served, by tag, by digest, nor blob by blob.
    assert _request(f"{a.url}/v2/private/app/manifests/v1", "HEAD")[0] == 404
    status, headers, body = _request(f"{a.url}/v2/private/app/manifests/{private.index_digest}")
    assert status == 404 and b"MANIFEST_UNKNOWN" in body
    assert headers["oci-namespace"] == "docker.io"
    for digest in private.layer_digests:
        status, _, body = _request(f"{a.url}/v2/private/app/blobs/{digest}?ns=docker.io")
        assert status == 404 and b"BLOB_UNKNOWN" in body
    # The same bytes under a name that is not filtered are served (blobs are content).
    assert _request(f"{a.url}/v2/library/demo/blobs/{private.layer_digests[0]}")[0] == 200
    # What is not filtered is served, with the namespace it was served for.
    status, headers, _ = _request(f"{a.url}/v2/library/demo/manifests/v1", "HEAD")
    assert status == 200 and headers["oci-namespace"] == "docker.io"

    # Advertised: exactly the demo image's digests; none of the filtered image's.
    deadline = time.monotonic() + 15
    while _advertised_content(a) != len(demo.blobs):
        assert time.monotonic() < deadline, f"advertised {_advertised_content(a)}"
        time.sleep(0.1)
    # Through the peer: the demo image's layer comes from a, the filtered one is refused.
    headers = _wait_status(f"{b.url}/v2/library/demo/blobs/{demo.layer_digests[0]}", 200)
    assert headers["x-spegel-source"] == "peer"
    assert _request(f"{b.url}/v2/private/app/blobs/{private.layer_digests[0]}")[0] == 404


def _secret(directory: Path, username: str, password: str) -> Path:
    directory.mkdir(parents=True)
    (directory / "username").write_text(username)
    (directory / "password").write_text(password + "\n")
    return directory


def _basic(username: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_basic_auth_between_two_nodes(spegel_node: StartNode, tmp_path: Path) -> None:
    ips = [free_loopback_ip(5000) for _ in range(2)]
    layout = tmp_path / "a"
    demo = build_image(layout, DEMO, layer_sizes=(50_000,))
    secret = _secret(tmp_path / "basic-auth", "spegel", "s3cret")
    a = _node(spegel_node, ips[0], layout, ips[1:], "--basic-auth-dir", str(secret))
    b = _node(spegel_node, ips[1], tmp_path / "b", ips[:1], "--basic-auth-dir", str(secret))
    good = _basic("spegel", "s3cret")
    blob = f"/v2/library/demo/blobs/{demo.layer_digests[0]}"

    for headers in ({}, _basic("spegel", "wrong"), _basic("other", "s3cret"),
                    {"Authorization": "Basic !!!"}, {"Authorization": "Bearer x"}):
        status, response_headers, body = _request(f"{a.url}{blob}", headers=headers)
        assert status == 401, headers
        assert response_headers["www-authenticate"].startswith("Basic")
        assert b"UNAUTHORIZED" in body
    assert _request(f"{a.url}/v2/", headers={})[0] == 401
    # Probes stay open for the kubelet.
    assert _request(f"{a.url}/readyz")[0] == 200
    assert _request(f"{a.url}{blob}", headers=good)[0] == 200
    # b has nothing: it asks a, which only answers because b sends the credentials.
    response_headers = _wait_status(f"{b.url}{blob}", 200, good)
    assert response_headers["x-spegel-source"] == "peer"
    status, _, body = _request(f"{b.url}{blob}", headers=good)
    assert status == 200 and len(body) == demo.blobs[demo.layer_digests[0]]


def test_a_bad_basic_auth_dir_fails_at_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "spegel_core.cli.main", "registry", "--router", "none",
         "--basic-auth-dir", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "--basic-auth-dir" in result.stderr and "does not exist" in result.stderr


def _json(url: str) -> tuple[int, dict[str, object]]:
    import json

    status, _, body = _request(url)
    return status, json.loads(body)


def test_measure_process_metrics_and_the_debug_switch(spegel_node: StartNode,
                                                      tmp_path: Path) -> None:
    ips = [free_loopback_ip(5000) for _ in range(2)]
    layout = tmp_path / "a"
    demo = build_image(layout, DEMO, layer_sizes=(50_000, 70_000))
    a = _node(spegel_node, ips[0], layout, ips[1:], "--debug-web-enabled=false")
    b = _node(spegel_node, ips[1], tmp_path / "b", ips[:1])
    measure = f"{b.metrics_url}/debug/measure?image={DEMO}&format=json"
    deadline = time.monotonic() + 20
    while True:
        status, result = _json(measure)
        assert status == 200, result
        if result["error"] is None and result["providers"]:
            break  # (a lookup may run before a's first advertisement arrives)
        assert time.monotonic() < deadline, result
        time.sleep(0.2)
    assert result["providers"] == [a.url]
    assert isinstance(result["lookup_seconds"], float)
    assert result["digest"] == demo.index_digest
    fetches = result["fetches"]
    assert isinstance(fetches, list)
    assert [f["kind"] for f in fetches] == ["manifest", "manifest", "config", "layer", "layer"]
    assert all(f["status"] == 200 and f["verified"] and f["source"] == "peer" for f in fetches)
    assert {f["digest"] for f in fetches} <= set(demo.blobs)
    # The page at the Go original's path, the HTML form, and bad input.
    assert _request(f"{b.metrics_url}/debug/web/")[0] == 200
    status, _, page = _request(f"{b.metrics_url}/debug/measure?image={DEMO}")
    assert status == 200 and b'id="fetches"' in page and b">peer<" in page
    assert _request(f"{b.metrics_url}/debug/measure?image=UPPER/Case:!&format=json")[0] == 400
    status, result = _json(f"{b.metrics_url}/debug/measure?image=docker.io/library/none:v9"
                           "&format=json")
    assert status == 200 and result["providers"] == [] and "404" in str(result["error"])
    # Process metrics for alerts; a's debug pages are switched off, its metrics are not.
    _, _, metrics = _request(f"{a.metrics_url}/metrics")
    assert re.search(rb"^process_resident_memory_bytes [0-9.e+]+$", metrics, re.M)
    assert re.search(rb"^process_cpu_seconds_total [0-9.e+]+$", metrics, re.M)
    assert _request(f"{a.metrics_url}/debug")[0] == 404
    assert _request(f"{a.metrics_url}/debug/measure?image={DEMO}")[0] == 404
