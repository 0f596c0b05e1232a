"""The distribution spec's pull workflow, walked on real node processes.

One node serves an image from its own store (``local``); another has nothing and
serves the same content through that peer (``peer``). On both, for manifests (by
tag and by digest) and blobs, with GET and HEAD: the status, the headers
(``Docker-Content-Digest``, ``Content-Length``, ``Content-Type``) and, for what is
missing or malformed, the error body with a code of the spec's list. The cases are
those of the OCI conformance suite's pull workflow (``.INVALID_MANIFEST_NAME`` is a
404, ``sha256:totallywrong`` may stay a 400), plus the optional endpoints the mirror
does not serve.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from spegel_core.oci.image_builder import BuiltImage, build_image
from spegel_core.testing.nodes import NodeProcess

pytestmark = pytest.mark.e2e
StartNode = Callable[..., NodeProcess]
REF = "docker.io/library/spec:v1"
NAME = "library/spec"
MISSING = "sha256:" + "0" * 64
#: The codes of the distribution spec (its error-codes table).
SPEC_CODES = {"BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
              "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID",
              "NAME_UNKNOWN", "SIZE_INVALID", "UNAUTHORIZED", "DENIED", "UNSUPPORTED",
              "TOOMANYREQUESTS"}


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    return build_image(tmp_path_factory.mktemp("spec") / "layout", REF,
                       layer_sizes=(200_000, 3000))


@pytest.fixture
def nodes(spegel_node: StartNode, image: BuiltImage,
          tmp_path: Path) -> dict[str, NodeProcess]:
    local = spegel_node("--content-store", "oci-layout", "--oci-layout-path",
                        str(image.layout_dir))
    (tmp_path / "empty").mkdir()
    peer = spegel_node("--content-store", "oci-layout", "--oci-layout-path",
                       str(tmp_path / "empty"), "--bootstrap-kind", "static",
                       "--static-peers", f"/ip4/{local.ip}/udp/5001",
                       "--mirror-resolve-timeout", "500ms")
    # The peer node serves what the local one advertised once it has found it.
    keys = [f"/v2/{NAME}/manifests/v1", *(f"/v2/{NAME}/blobs/{d}" for d in image.blobs)]
    deadline = time.monotonic() + 20
    with httpx.Client(base_url=peer.url, timeout=10) as client:
        for path in keys:
            while client.head(path).status_code != 200:
                assert time.monotonic() < deadline, f"the peer node never found {path}"
                time.sleep(0.1)
    return {"local": local, "peer": peer}


def check_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, (response.request.url, response.text)
    if response.request.method == "HEAD":
        assert response.content == b""
        return
    assert response.headers["content-type"] == "application/json"
    errors = response.json()["errors"]
    assert [e["code"] for e in errors] == [code] and code in SPEC_CODES
    assert errors[0]["message"]


@pytest.mark.parametrize("serving", ["local", "peer"])
def test_the_pull_workflow_answers_as_the_spec_says(nodes: dict[str, NodeProcess],
                                                    image: BuiltImage, serving: str) -> None:
    node = nodes[serving]
    with httpx.Client(base_url=node.url, timeout=10) as client:
        root = client.get("/v2/")
        assert root.status_code == 200
        assert root.headers["docker-distribution-api-version"] == "registry/2.0"

        # Manifests by tag and by digest: GET and HEAD agree on every header.
        wanted = [("v1", image.index_digest)] + [(d, d) for d in image.manifest_digests]
        for reference, digest in wanted:
            path = f"/v2/{NAME}/manifests/{reference}"
            get, head = client.get(path), client.head(path)
            for response in (get, head):
                assert response.status_code == 200, (path, response.text)
                assert response.headers["docker-content-digest"] == digest
                assert response.headers["content-type"] == image.media_types[digest]
                assert response.headers["x-spegel-source"] == serving
            assert int(get.headers["content-length"]) == len(get.content) == image.blobs[digest]
            assert head.headers["content-length"] == get.headers["content-length"]
            assert head.content == b""
            assert "sha256:" + hashlib.sha256(get.content).hexdigest() == digest

        # Blobs (configs and layers).
        for digest in [*image.config_digests, *image.layer_digests]:
            path = f"/v2/{NAME}/blobs/{digest}"
            get, head = client.get(path), client.head(path)
            for response in (get, head):
                assert response.status_code == 200, (path, response.text)
                assert response.headers["docker-content-digest"] == digest
                assert response.headers["content-type"] == "application/octet-stream"
                assert int(response.headers["content-length"]) == image.blobs[digest]
            assert get.content == image.blob_path(digest).read_bytes() and head.content == b""

        # What is missing, or cannot name anything: 404 with the spec's codes.
        for method in ("GET", "HEAD"):
            for reference in ("nosuchtag", MISSING, ".INVALID_MANIFEST_NAME", "-bad",
                              "t" * 200):
                check_error(client.request(method, f"/v2/{NAME}/manifests/{reference}"),
                            404, "MANIFEST_UNKNOWN")
            check_error(client.request(method, f"/v2/{NAME}/blobs/{MISSING}"),
                        404, "BLOB_UNKNOWN")
            check_error(client.request(method, f"/v2/no/such/repo/manifests/{MISSING}"),
                        404, "MANIFEST_UNKNOWN")
            # A malformed digest may stay a 400 (the conformance suite accepts it).
            check_error(client.request(method, f"/v2/{NAME}/manifests/sha256:totallywrong"),
                        400, "DIGEST_INVALID")
            check_error(client.request(method, f"/v2/{NAME}/blobs/sha256:totallywrong"),
                        400, "DIGEST_INVALID")
            # The optional endpoints the mirror does not serve.
            check_error(client.request(method, f"/v2/{NAME}/tags/list"), 404, "UNSUPPORTED")
            check_error(client.request(method, f"/v2/{NAME}/referrers/{image.index_digest}"),
                        404, "UNSUPPORTED")
    assert "Traceback" not in node.log()
