"""The /v2 routes against an in-memory store (in-process ASGI)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from spegel_core.config import SpegelConfig
from spegel_core.oci.image_builder import BuiltImage, build_image
from spegel_core.protocols import BytesServed, MirrorRequest, Source
from spegel_core.testing.fakes import MemoryContentStore, RecordingSink

REF = "docker.io/library/demo:v1"


@pytest.fixture
def image(tmp_path: Path) -> BuiltImage:
    return build_image(tmp_path / "layout", REF, layer_sizes=(70_000, 3000))


@pytest.fixture
def store(image: BuiltImage) -> MemoryContentStore:
    store = MemoryContentStore()
    store.add_built_image(image)
    return store


@pytest.fixture
async def client(mirror_client: Callable[..., Any], make_config: Callable[..., SpegelConfig],
                 store: MemoryContentStore) -> AsyncIterator[httpx.AsyncClient]:
    async with mirror_client(make_config(content_store="memory"), store) as c:
        yield c


async def test_v2_root(client: httpx.AsyncClient) -> None:
    response = await client.get("/v2/")
    assert response.status_code == 200
    assert response.headers["docker-distribution-api-version"] == "registry/2.0"


async def test_manifest_by_tag_head_and_get(client: httpx.AsyncClient, image: BuiltImage) -> None:
    head = await client.head("/v2/library/demo/manifests/v1?ns=docker.io")
    assert head.status_code == 200
    assert head.headers["docker-content-digest"] == image.index_digest
    assert head.headers["content-type"] == "application/vnd.oci.image.index.v1+json"
    assert int(head.headers["content-length"]) == image.blobs[image.index_digest]
    assert head.content == b""
    get = await client.get("/v2/library/demo/manifests/v1")  # no ns: docker.io
    assert "sha256:" + hashlib.sha256(get.content).hexdigest() == image.index_digest


async def test_manifest_by_digest(client: httpx.AsyncClient, image: BuiltImage) -> None:
    digest = image.manifest_digests[0]
    response = await client.get(f"/v2/library/demo/manifests/{digest}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.oci.image.manifest.v1+json"
    assert json.loads(response.content)["layers"]


async def test_tag_of_other_registry_is_not_here(client: httpx.AsyncClient) -> None:
    response = await client.get("/v2/library/demo/manifests/v1?ns=ghcr.io")
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


async def test_blob_full_and_ranges(client: httpx.AsyncClient, image: BuiltImage) -> None:
    digest = image.layer_digests[0]
    data = image.blob_path(digest).read_bytes()
    full = await client.get(f"/v2/library/demo/blobs/{digest}")
    assert full.status_code == 200 and full.content == data
    assert full.headers["accept-ranges"] == "bytes"
    assert full.headers["docker-content-digest"] == digest
    part = await client.get(f"/v2/library/demo/blobs/{digest}", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    tail = await client.get(f"/v2/library/demo/blobs/{digest}", headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == data[-10:]
    beyond = await client.get(f"/v2/library/demo/blobs/{digest}",
                              headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(data)}"


async def test_blob_head(client: httpx.AsyncClient, image: BuiltImage) -> None:
    digest = image.layer_digests[1]
    response = await client.head(f"/v2/library/demo/blobs/{digest}")
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == image.blobs[digest]
    assert response.content == b""


async def test_layer_is_not_a_manifest(client: httpx.AsyncClient, image: BuiltImage) -> None:
    response = await client.get(f"/v2/library/demo/manifests/{image.layer_digests[0]}")
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


MISSING = "sha256:" + "0" * 64

BAD_REQUESTS: list[tuple[str, str, dict[str, str], int, str]] = [
    ("GET", f"/v2/library/demo/blobs/{MISSING}", {}, 404, "BLOB_UNKNOWN"),
    ("GET", f"/v2/library/demo/manifests/{MISSING}", {}, 404, "MANIFEST_UNKNOWN"),
    ("GET", "/v2/library/demo/manifests/nope", {}, 404, "MANIFEST_UNKNOWN"),
    ("GET", "/v2/library/demo/blobs/sha256:xyz", {}, 400, "DIGEST_INVALID"),
    ("GET", "/v2/library/demo/blobs/md5:abcd", {}, 400, "DIGEST_INVALID"),
    ("GET", "/v2/library/demo/blobs/sha256:" + "A" * 64, {}, 400, "DIGEST_INVALID"),
    # %2F decodes to "/": no route matches, so nothing is looked up at all.
    ("GET", "/v2/library/demo/blobs/..%2F..%2Fetc%2Fpasswd", {}, 404, "BLOB_UNKNOWN"),
    ("GET", "/v2/library/demo/blobs/sha256:..%2F..%2F..%2Fetc%2Fpasswd", {}, 404, "BLOB_UNKNOWN"),
    ("GET", "/v2/library/demo/blobs/sha256:..", {}, 400, "DIGEST_INVALID"),
    ("GET", "/v2/library/demo/manifests/sha256:1234", {}, 400, "DIGEST_INVALID"),
    ("GET", "/v2/Library/Demo/manifests/v1", {}, 400, "NAME_INVALID"),
    ("GET", "/v2/a//b/manifests/v1", {}, 400, "NAME_INVALID"),
    ("GET", "/v2/-x/manifests/v1", {}, 400, "NAME_INVALID"),
    ("GET", "/v2/" + "a" * 300 + "/manifests/v1", {}, 400, "NAME_INVALID"),
    # A reference that is neither a tag nor a digest is a manifest nobody has (the
    # conformance suite's .INVALID_MANIFEST_NAME); a malformed digest stays a 400.
    ("GET", "/v2/library/demo/manifests/-badtag", {}, 404, "MANIFEST_UNKNOWN"),
    ("GET", "/v2/library/demo/manifests/" + "t" * 200, {}, 404, "MANIFEST_UNKNOWN"),
    ("GET", "/v2/library/demo/manifests/.INVALID_MANIFEST_NAME", {}, 404, "MANIFEST_UNKNOWN"),
    ("GET", "/v2/library/demo/manifests/sha256:totallywrong", {}, 400, "DIGEST_INVALID"),
    ("GET", "/v2/library/demo/manifests/v1?ns=bad host", {}, 400, "NAME_INVALID"),
    ("GET", "/v2/library/demo/manifests/v1?ns=ftp://x", {}, 400, "NAME_INVALID"),
    ("GET", "/v2/library/demo/manifests/v1?ns=" + "x" * 400, {}, 400, "INVALID_REQUEST"),
    ("GET", "BLOB", {"Range": "bytes=abc"}, 400, "RANGE_INVALID"),
    ("GET", "BLOB", {"Range": "lines=1-2"}, 400, "RANGE_INVALID"),
    ("GET", "BLOB", {"Range": "bytes=9-1"}, 400, "RANGE_INVALID"),
    ("GET", "BLOB", {"Range": "bytes=99999999-"}, 416, "RANGE_INVALID"),
    ("POST", "/v2/library/demo/blobs/uploads/", {}, 405, "UNSUPPORTED"),
    ("PUT", "/v2/library/demo/manifests/v1", {}, 405, "UNSUPPORTED"),
    ("PATCH", "/v2/library/demo/blobs/uploads/x", {}, 405, "UNSUPPORTED"),
    ("DELETE", f"/v2/library/demo/manifests/{MISSING}", {}, 405, "UNSUPPORTED"),
    # Optional endpoints the mirror does not serve: 404 with a code of the spec's list.
    ("GET", "/v2/library/demo/tags/list", {}, 404, "UNSUPPORTED"),
    ("GET", "/v2/library/demo/tags/list?n=10&last=a", {}, 404, "UNSUPPORTED"),
    ("GET", f"/v2/library/demo/referrers/{MISSING}", {}, 404, "UNSUPPORTED"),
    ("GET", "/v2/_catalog", {}, 404, "UNSUPPORTED"),
    ("GET", "/v3/", {}, 404, "UNSUPPORTED"),
    ("GET", "/v2/library/demo/blobs/", {}, 404, "BLOB_UNKNOWN"),
    ("GET", "/v2/library/demo/manifests/", {}, 404, "MANIFEST_UNKNOWN"),
]


@pytest.mark.parametrize("method, path, headers, status, code", BAD_REQUESTS)
async def test_bad_input_gets_a_clear_oci_error(
    client: httpx.AsyncClient, image: BuiltImage, method: str, path: str,
    headers: dict[str, str], status: int, code: str,
) -> None:
    if path == "BLOB":
        path = f"/v2/library/demo/blobs/{image.layer_digests[1]}"
    response = await client.request(method, path, headers=headers)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["errors"][0]["code"] == code
    assert body["errors"][0]["message"]
    assert "Traceback" not in response.text


async def test_mirrored_registries_filter(mirror_client: Callable[..., Any],
                                          make_config: Callable[..., SpegelConfig],
                                          store: MemoryContentStore) -> None:
    config = make_config(content_store="memory", mirrored_registries="ghcr.io")
    async with mirror_client(config, store) as client:
        response = await client.get("/v2/library/demo/manifests/v1?ns=docker.io")
        assert response.status_code == 404
        assert response.json()["errors"][0]["code"] == "NAME_UNKNOWN"


async def test_filtered_and_unresolved_tags(mirror_client: Callable[..., Any],
                                            make_config: Callable[..., SpegelConfig],
                                            store: MemoryContentStore, image: BuiltImage) -> None:
    for values in ({"registry_filters": ":v1$"}, {"resolve_tags": "false"}):
        async with mirror_client(make_config(content_store="memory", **values), store) as client:
            assert (await client.head("/v2/library/demo/manifests/v1")).status_code == 404
            by_digest = await client.head(f"/v2/library/demo/manifests/{image.index_digest}")
            assert by_digest.status_code == 200


async def test_readyz_follows_the_store(client: httpx.AsyncClient,
                                        store: MemoryContentStore) -> None:
    assert (await client.get("/livez")).status_code == 200
    assert (await client.get("/readyz")).json()["ready"] is True
    store.set_status(False, "store disconnected")
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["store"] == "store disconnected"


async def test_openapi_describes_v2(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    paths = schema["paths"]
    assert "/v2/{name}/manifests/{reference}" in paths
    assert "/v2/{name}/blobs/{digest}" in paths
    assert {"get", "head"} <= set(paths["/v2/{name}/blobs/{digest}"])
    assert (await client.get("/docs")).status_code == 200


async def test_local_serves_emit_metric_events(
    mirror_client: Callable[..., Any], make_config: Callable[..., SpegelConfig],
    store: MemoryContentStore, image: BuiltImage, register_plugin: Callable[[object, str], None],
) -> None:
    from spegel_core import hookimpl

    sink = RecordingSink()

    class Metrics:
        @hookimpl
        def spegel_register_metrics(self, config: SpegelConfig, registry: Any) -> None:
            registry.add(sink)

    register_plugin(Metrics(), "recording-metrics")
    async with mirror_client(make_config(content_store="memory"), store) as client:
        digest = image.layer_digests[0]
        await client.get(f"/v2/library/demo/blobs/{digest}")
    requests = sink.of_type(MirrorRequest)
    assert requests and requests[-1].kind == "blob" and requests[-1].source is Source.LOCAL
    assert sink.of_type(BytesServed)[-1].bytes == image.blobs[digest]


async def test_a_failing_metrics_sink_never_breaks_a_request(
    mirror_client: Callable[..., Any], make_config: Callable[..., SpegelConfig],
    store: MemoryContentStore, register_plugin: Callable[[object, str], None],
) -> None:
    from spegel_core import hookimpl

    class Broken:
        def emit(self, event: object) -> None:
            raise RuntimeError("sink down")

    class Metrics:
        @hookimpl
        def spegel_register_metrics(self, config: SpegelConfig, registry: Any) -> None:
            registry.add(Broken())

    register_plugin(Metrics(), "broken-metrics")
    async with mirror_client(make_config(content_store="memory"), store) as client:
        assert (await client.get("/v2/library/demo/manifests/v1")).status_code == 200


async def test_plugins_add_routes(
    mirror_client: Callable[..., Any], make_config: Callable[..., SpegelConfig],
    store: MemoryContentStore, register_plugin: Callable[[object, str], None],
) -> None:
    from fastapi import FastAPI

    from spegel_core import hookimpl

    class Debug:
        @hookimpl
        def spegel_add_routes(self, app: FastAPI, config: SpegelConfig) -> None:
            @app.get("/debug/hello")
            async def hello() -> dict[str, str]:
                return {"store": config.core.content_store}

    register_plugin(Debug(), "debug-routes")
    async with mirror_client(make_config(content_store="memory"), store) as client:
        assert (await client.get("/debug/hello")).json() == {"store": "memory"}
        assert "/debug/hello" in (await client.get("/openapi.json")).json()["paths"]


@pytest.mark.parametrize("wait", ["abc", "-5", "nan", "inf", "1e999", "", "0x10", "5" * 400])
@pytest.mark.parametrize(("kind", "code"), [("blobs", "BLOB_UNKNOWN"),
                                            ("manifests", "MANIFEST_UNKNOWN")])
async def test_a_malformed_wait_header_is_ignored(client: httpx.AsyncClient, wait: str,
                                                  kind: str, code: str) -> None:
    # X-Spegel-Wait (single flight) from a peer, on a blob or a manifest by digest: any
    # value that is not a positive number means "answer at once"; nothing makes the
    # mirror fail or hang.
    missing = "sha256:" + "e" * 64
    response = await client.get(f"/v2/library/x/{kind}/{missing}",
                                headers={"X-Spegel-Mirrored": "true", "X-Spegel-Wait": wait})
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == code
