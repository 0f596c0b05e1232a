"""The store building blocks shared by the built-in stores (and open to third-party ones)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spegel_core.errors import BlobUnknown, RangeInvalid, RangeNotSatisfiable
from spegel_core.oci.descriptors import (
    Child,
    children,
    decode_manifest,
    descriptors_of,
    parse_descriptor,
)
from spegel_core.oci.mediatypes import (
    MAX_MANIFEST_SIZE,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
)
from spegel_core.protocols import StoreConnection, StoreEvent, StoreEventKind, StoreStatus
from spegel_core.store_kit import (
    READ_CHUNK,
    StoreLifecycle,
    read_file_range,
    read_manifest_file,
    regular_file_size,
)
from spegel_core.testing.fakes import RecordingSink

DIGEST = "sha256:" + "a" * 64


async def _read(path: Path, offset: int = 0, length: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in read_file_range(path, offset, length,
                                                              missing="gone")])


async def test_read_file_range(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = bytes(range(256)) * (READ_CHUNK // 128)  # two chunks
    path.write_bytes(data)
    assert await _read(path) == data
    assert await _read(path, 10, 5) == data[10:15]
    assert await _read(path, len(data)) == b""
    assert await _read(path, 5, 10 * len(data)) == data[5:]  # stops at the end
    with pytest.raises(RangeNotSatisfiable):
        await _read(path, len(data) + 1)
    with pytest.raises(RangeInvalid):
        await _read(path, -1)
    with pytest.raises(RangeInvalid):
        await _read(path, 0, -1)
    with pytest.raises(BlobUnknown, match="gone"):
        await _read(tmp_path / "missing")
    with pytest.raises(BlobUnknown):
        await _read(tmp_path)  # a directory


def test_regular_file_size(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    assert regular_file_size(tmp_path / "f") == 3
    assert regular_file_size(tmp_path) is None
    assert regular_file_size(tmp_path / "missing") is None
    assert regular_file_size(tmp_path / "f" / "below") is None


async def test_lifecycle_status_and_events() -> None:
    life = StoreLifecycle()
    running = StoreStatus(True, "fine")
    assert life.status(running) == StoreStatus(False, "not started") and life.state == "new"
    assert life.begin() and not life.begin()
    assert life.status(running) is running and life.state == "running"
    stream = life.subscribe()
    event = StoreEvent(StoreEventKind.CONTENT_CREATED, DIGEST)
    life.publish(event)
    assert life.end() and not life.end() and not life.begin()
    assert [e async for e in stream] == [event]  # queued events, then the end
    assert life.status(running) == StoreStatus(False, "closed") and life.state == "closed"


@pytest.mark.parametrize(("value", "expected"), [
    ({"digest": DIGEST, "mediaType": "x/y"}, Child(DIGEST, "x/y")),
    ({"digest": DIGEST, "mediaType": ""}, Child(DIGEST, None)),
    ({"digest": DIGEST, "mediaType": 3}, Child(DIGEST, None)),
    ({"digest": "sha256:short"}, None),
    ({"mediaType": "x/y"}, None),
    ([DIGEST], None),
])
def test_parse_descriptor(value: object, expected: Child | None) -> None:
    assert parse_descriptor(value) == expected


def test_lifecycle_connection_changes_are_reported_once() -> None:
    sink = RecordingSink()
    life = StoreLifecycle(connected=False, detail="not connected yet")
    life.begin()
    assert life.status() == StoreStatus(False, "not connected yet")
    assert life.set_connected(True, metrics=sink)
    assert not life.set_connected(True, metrics=sink)  # no change: not reported again
    assert life.status() == StoreStatus(True, "")
    assert not life.set_connected(True, "a note")  # a note while connected
    assert life.status() == StoreStatus(True, "a note")
    assert life.set_connected(False, "gone", metrics=sink)
    assert not life.set_connected(False, "still gone", metrics=sink)
    assert life.status() == StoreStatus(False, "still gone")
    assert life.set_connected(True)  # a change nobody is told of
    assert sink.events == [StoreConnection(True), StoreConnection(False)]
    life.end()
    assert life.status() == StoreStatus(False, "closed")


def test_read_manifest_file(tmp_path: Path) -> None:
    (tmp_path / "m").write_bytes(b"{}")
    (tmp_path / "big").write_bytes(b" " * (MAX_MANIFEST_SIZE + 1))
    (tmp_path / "edge").write_bytes(b" " * MAX_MANIFEST_SIZE)
    assert read_manifest_file(tmp_path / "m") == b"{}"
    assert read_manifest_file(tmp_path / "big") is None
    assert read_manifest_file(tmp_path / "edge") == b" " * MAX_MANIFEST_SIZE
    assert read_manifest_file(tmp_path / "missing") is None
    assert read_manifest_file(tmp_path) is None  # a directory


def test_decode_manifest_and_its_descriptors() -> None:
    layer = {"digest": DIGEST, "mediaType": OCI_LAYER_GZIP}
    config = {"digest": "sha256:" + "b" * 64, "mediaType": OCI_CONFIG}
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
                           "layers": [layer, {"digest": "bad"}]}).encode()
    decoded = decode_manifest(manifest, None)  # sniffed
    assert decoded is not None and decoded[0] == OCI_MANIFEST
    found = descriptors_of(*decoded)
    assert found == [Child(config["digest"], config["mediaType"]),
                     Child(DIGEST, layer["mediaType"])]
    assert children(manifest, OCI_MANIFEST) == (OCI_MANIFEST, found)
    index = json.dumps({"schemaVersion": 2, "manifests": [{"digest": DIGEST}]}).encode()
    decoded = decode_manifest(index, OCI_INDEX)
    assert decoded is not None and descriptors_of(*decoded) == [Child(DIGEST, None)]
    assert decode_manifest(b"\x1f\x8b not json", None) is None
    assert decode_manifest(b"[1, 2]", OCI_INDEX) is None
    assert decode_manifest(b"{", OCI_MANIFEST) is None
