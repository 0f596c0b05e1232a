"""The mirror's edge in-process: registry filters, OCI-Namespace, basic auth, filtered digests."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spegel_core.config import SpegelConfig
from spegel_core.credentials import Credentials, load_credentials, parse_basic
from spegel_core.filters import RegistryFilter, filter_text, filtered_digests, image_digests
from spegel_core.oci.image_builder import BuiltImage, build_image
from spegel_core.oci.reference import Reference
from spegel_core.protocols import Image
from spegel_core.testing.fakes import MemoryContentStore

DEMO = "docker.io/library/demo:v1"
PRIVATE = "docker.io/private/app:v1"


@pytest.fixture
def images(tmp_path: Path) -> tuple[BuiltImage, BuiltImage]:
    layout = tmp_path / "layout"
    return (build_image(layout, DEMO, layer_sizes=(5000,)),
            build_image(layout, PRIVATE, layer_sizes=(6000,), seed=3))


@pytest.fixture
def store(images: tuple[BuiltImage, BuiltImage]) -> MemoryContentStore:
    store = MemoryContentStore()
    for image in images:
        store.add_built_image(image)
    return store


def test_filter_text_is_the_originals() -> None:
    assert filter_text("docker.io", "library/demo", "v1") == "docker.io/library/demo:v1"
    assert filter_text("ghcr.io", "a/b") == "ghcr.io/a/b"
    rf = RegistryFilter([r"^docker\.io/private/", ":latest$"])
    assert rf.matches("docker.io", "private/app")
    assert rf.matches("quay.io", "x", "latest") and not rf.matches("quay.io", "x", "v1")
    assert not RegistryFilter([])


async def test_filtered_digests_keep_shared_content(store: MemoryContentStore,
                                                    images: tuple[BuiltImage, BuiltImage]
                                                    ) -> None:
    demo, private = images
    assert await image_digests(store, demo.index_digest) == set(demo.blobs)
    listed = [Image(Reference.parse(DEMO), demo.index_digest),
              Image(Reference.parse(PRIVATE), private.index_digest)]
    blocked = await filtered_digests(store, listed, RegistryFilter([r"/private/"]))
    assert blocked == set(private.blobs) - set(demo.blobs)
    assert await filtered_digests(store, listed, RegistryFilter([])) == set()
    # An image that shares the private one's blobs keeps them advertised.
    shared = [*listed, Image(Reference.parse("docker.io/library/copy:v1"),
                             private.index_digest)]
    assert await filtered_digests(store, shared, RegistryFilter([r"/private/"])) == set()


async def test_filters_apply_to_tags_digests_and_blobs(
        mirror_client: Callable[..., Any], make_config: Callable[..., SpegelConfig],
        store: MemoryContentStore, images: tuple[BuiltImage, BuiltImage]) -> None:
    demo, private = images
    config = make_config(content_store="memory", registry_filters=[r"^docker\.io/private/"])
    async with mirror_client(config, store) as client:
        for path in ("/v2/private/app/manifests/v1",
                     f"/v2/private/app/manifests/{private.index_digest}",
                     f"/v2/private/app/blobs/{private.layer_digests[0]}?ns=docker.io"):
            response = await client.get(path)
            assert response.status_code == 404, path
            assert response.headers["oci-namespace"] == "docker.io"
        ok = await client.get(f"/v2/library/demo/blobs/{demo.layer_digests[0]}?ns=docker.io")
        assert ok.status_code == 200 and ok.headers["oci-namespace"] == "docker.io"
        other = await client.head("/v2/library/demo/manifests/v1?ns=ghcr.io")
        assert other.headers["oci-namespace"] == "ghcr.io"
        # An invalid ns is the route's business: a 400 naming it, not a crash.
        bad = await client.get("/v2/library/demo/manifests/v1?ns=%2F%2F")
        assert bad.status_code == 400 and "oci-namespace" not in bad.headers


def test_credentials(tmp_path: Path) -> None:
    (tmp_path / "username").write_text("spegel\n")
    (tmp_path / "password").write_text("p:ss word\r\n")
    credentials = load_credentials(tmp_path)
    assert credentials == Credentials("spegel", "p:ss word")
    assert "p:ss" not in repr(credentials)
    assert parse_basic(credentials.header) == ("spegel", "p:ss word")
    assert credentials.check(credentials.header)
    assert credentials.check("basic " + credentials.header.split()[1])  # scheme is caseless
    for bad in (None, "", "Basic", "Basic !!!", "Bearer x", "Basic "
                + base64.b64encode(b"spegel").decode(),
                "Basic " + base64.b64encode(b"spegel:p:ss").decode()):
        assert not credentials.check(bad), bad
    (tmp_path / "password").write_text("")
    with pytest.raises(ValueError, match="must not be empty"):
        load_credentials(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        load_credentials(tmp_path / "missing")


async def test_basic_auth_in_process(mirror_client: Callable[..., Any],
                                     make_config: Callable[..., SpegelConfig],
                                     store: MemoryContentStore, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "username").write_text("u")
    (secret / "password").write_text("p")
    config = make_config(content_store="memory", basic_auth_dir=str(secret))
    async with mirror_client(config, store) as client:
        denied = await client.get("/v2/")
        assert denied.status_code == 401
        assert denied.headers["www-authenticate"] == 'Basic realm="spegel"'
        assert denied.json()["errors"][0]["code"] == "UNAUTHORIZED"
        assert (await client.get("/v2/", headers={"Authorization": Credentials("u", "p").header})
                ).status_code == 200
        assert (await client.get("/livez")).status_code == 200
