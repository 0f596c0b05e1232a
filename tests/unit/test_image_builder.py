"""The deterministic OCI image-layout builder."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from spegel_core.oci.image_builder import (
    CONTAINERD_NAME_ANNOTATION,
    REF_NAME_ANNOTATION,
    build_image,
    read_layout_index,
    remove_image,
)
from spegel_core.oci.mediatypes import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
)

SMALL = (1000, 5000)


def load(path: Path) -> dict[str, object]:
    document = json.loads(path.read_bytes())
    assert isinstance(document, dict)
    return document


def test_same_seed_same_digests(tmp_path: Path) -> None:
    one = build_image(tmp_path / "a", layer_sizes=SMALL, seed=3)
    two = build_image(tmp_path / "b", layer_sizes=SMALL, seed=3)
    other = build_image(tmp_path / "c", layer_sizes=SMALL, seed=4)
    assert one.index_digest == two.index_digest
    assert one.blobs == two.blobs
    assert other.index_digest != one.index_digest
    assert not set(other.layer_digests) & set(one.layer_digests)


def test_every_blob_is_named_by_its_digest(tmp_path: Path) -> None:
    image = build_image(tmp_path, layer_sizes=SMALL)
    assert len(image.blobs) == 1 + 2 * (1 + 1 + len(SMALL))
    for digest, size in image.blobs.items():
        data = image.blob_path(digest).read_bytes()
        assert len(data) == size
        assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert image.total_size == sum(image.blobs.values())
    assert not [p for p in (tmp_path / "blobs" / "sha256").iterdir() if p.name.startswith(".")]


def test_structure(tmp_path: Path) -> None:
    image = build_image(tmp_path, "ghcr.io/org/app:1.0", layer_sizes=SMALL)
    assert load(tmp_path / "oci-layout") == {"imageLayoutVersion": "1.0.0"}
    [entry] = read_layout_index(tmp_path)["manifests"]
    assert entry["digest"] == image.index_digest and entry["mediaType"] == OCI_INDEX
    assert entry["annotations"] == {REF_NAME_ANNOTATION: "ghcr.io/org/app:1.0",
                                    CONTAINERD_NAME_ANNOTATION: "ghcr.io/org/app:1.0"}
    index = load(image.blob_path(image.index_digest))
    assert index["mediaType"] == OCI_INDEX
    platforms = [m["platform"] for m in index["manifests"]]  # type: ignore[attr-defined]
    assert platforms == [{"architecture": "amd64", "os": "linux"},
                         {"architecture": "arm64", "os": "linux"}]
    manifest = load(image.blob_path(image.manifest_digests[1]))
    assert manifest["mediaType"] == OCI_MANIFEST
    assert manifest["config"]["digest"] == image.config_digests[1]  # type: ignore[index]
    config = load(image.blob_path(image.config_digests[1]))
    assert config["architecture"] == "arm64"
    assert image.media_types[image.config_digests[0]] == OCI_CONFIG
    assert {image.media_types[d] for d in image.layer_digests} == {OCI_LAYER_GZIP}


def test_gzip_layer_is_a_tar_with_the_diff_id(tmp_path: Path) -> None:
    image = build_image(tmp_path, layer_sizes=(3000,), platforms=(("linux", "amd64"),))
    raw = gzip.decompress(image.blob_path(image.layer_digests[0]).read_bytes())
    config = load(image.blob_path(image.config_digests[0]))
    assert config["rootfs"]["diff_ids"] == [  # type: ignore[index]
        "sha256:" + hashlib.sha256(raw).hexdigest()]
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["layer0", "layer0/data.bin"]
        assert {m.mtime for m in members} == {1_700_000_000}
        assert members[1].size == 3000


def test_raw_layers(tmp_path: Path) -> None:
    sizes = (0, 1, 9 * 1024 * 1024 + 7)  # past one 8 MiB generation chunk
    image = build_image(tmp_path, layer_sizes=sizes, raw_layers=True,
                        platforms=(("linux", "amd64"),))
    assert [image.blobs[d] for d in image.layer_digests] == list(sizes)
    assert {image.media_types[d] for d in image.layer_digests} == {OCI_LAYER}
    again = build_image(tmp_path / "again", layer_sizes=sizes, raw_layers=True,
                        platforms=(("linux", "amd64"),))
    assert again.layer_digests == image.layer_digests


def test_second_image_merges_into_index_json(tmp_path: Path) -> None:
    first = build_image(tmp_path, "docker.io/library/a:v1", layer_sizes=SMALL)
    second = build_image(tmp_path, "docker.io/library/b:v1", layer_sizes=SMALL, seed=1)
    index = read_layout_index(tmp_path)
    names = {m["annotations"][REF_NAME_ANNOTATION]: m["digest"] for m in index["manifests"]}
    assert names == {first.reference: first.index_digest, second.reference: second.index_digest}
    # Rebuilding a reference replaces its entry instead of adding one.
    third = build_image(tmp_path, "docker.io/library/a:v1", layer_sizes=SMALL, seed=2)
    index = read_layout_index(tmp_path)
    assert len(index["manifests"]) == 2
    assert third.index_digest in {m["digest"] for m in index["manifests"]}


def test_remove_image_keeps_others_and_blobs(tmp_path: Path) -> None:
    first = build_image(tmp_path, "docker.io/library/a:v1", layer_sizes=SMALL)
    build_image(tmp_path, "docker.io/library/b:v1", layer_sizes=SMALL, seed=1)
    assert remove_image(tmp_path, first.reference)
    assert not remove_image(tmp_path, first.reference)
    [entry] = read_layout_index(tmp_path)["manifests"]
    assert entry["annotations"][REF_NAME_ANNOTATION] == "docker.io/library/b:v1"
    assert first.blob_path(first.index_digest).is_file()
    assert not remove_image(tmp_path / "nowhere", first.reference)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        build_image(tmp_path, platforms=())
    with pytest.raises(ValueError):
        build_image(tmp_path, layer_sizes=(-1,))
