"""One corrupt file on a provider hides only that file (issue: penalties fit the failure).

Node D holds an image in an OCI layout; one of its manifest files is then corrupted
on disk. D is right to answer 404 for that manifest (it never serves bytes that do not
match their digest). Node E, whose only provider is D, asks for the corrupt manifest
(404) and right after for another manifest D holds intact: it is served, because a
404 counts against (D, that digest), not against everything D has.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from spegel_core.oci.image_builder import build_image
from spegel_core.testing.nodes import NodeProcess

pytestmark = pytest.mark.e2e
StartNode = Callable[..., NodeProcess]
NAME = "library/corrupt"


def test_a_404_for_one_corrupt_file_does_not_hide_the_rest(spegel_node: StartNode,
                                                           tmp_path: Path) -> None:
    image = build_image(tmp_path / "layout", f"docker.io/{NAME}:v1", layer_sizes=(5000,),
                        platforms=(("linux", "amd64"), ("linux", "arm64")), seed=31)
    corrupt, intact = image.manifest_digests[0], image.manifest_digests[1]
    d = spegel_node("--content-store", "oci-layout", "--oci-layout-path",
                    str(image.layout_dir))
    (tmp_path / "empty").mkdir()
    e = spegel_node("--content-store", "oci-layout", "--oci-layout-path",
                    str(tmp_path / "empty"), "--bootstrap-kind", "static",
                    "--static-peers", f"/ip4/{d.ip}/udp/5001", "--mirror-resolve-timeout",
                    "500ms", "--mirror-peer-penalty", "10m")
    with httpx.Client(base_url=e.url, timeout=10) as client:
        # E has found D once it can see a layer through it (no manifest asked yet).
        layer = f"/v2/{NAME}/blobs/{image.layer_digests[0]}"
        deadline = time.monotonic() + 20
        while client.head(layer).status_code != 200:
            assert time.monotonic() < deadline, "E never found D"
            time.sleep(0.1)

        path = image.blob_path(corrupt)
        data = path.read_bytes()
        path.write_bytes(bytes(b ^ 0x20 for b in data[:16]) + data[16:])  # same size

        first = client.get(f"/v2/{NAME}/manifests/{corrupt}")
        assert first.status_code == 404 and first.json()["errors"][0]["code"] == \
            "MANIFEST_UNKNOWN"
        right_after = client.get(f"/v2/{NAME}/manifests/{intact}")
        assert right_after.status_code == 200, right_after.text
        assert right_after.headers["x-spegel-source"] == "peer"
        assert "sha256:" + hashlib.sha256(right_after.content).hexdigest() == intact
        # D's blobs stay reachable too, and the corrupt one stays a 404 (D, the only
        # provider, is still asked: penalised providers come last, never skipped).
        assert client.get(layer).status_code == 200
        assert client.get(f"/v2/{NAME}/manifests/{corrupt}").status_code == 404
    log = e.log()
    assert f"penalising peer {d.url} for {corrupt}" in log, log
    assert log.count(f"penalising peer {d.url} for") == 2, log  # no peer-wide penalty
    assert f"penalising peer {d.url} for 600s" not in log
    assert "does not match its digest" in d.log() or "corrupt" in d.log()
