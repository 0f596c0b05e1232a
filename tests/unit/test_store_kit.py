"""The store building blocks shared by the built-in stores (and open to third-party ones)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spegel_core.errors import BlobUnknown, RangeInvalid, RangeNotSatisfiable
from spegel_core.oci.descriptors import Child, parse_descriptor
from spegel_core.protocols import StoreEvent, StoreEventKind, StoreStatus
from spegel_core.store_kit import READ_CHUNK, StoreLifecycle, read_file_range, regular_file_size

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
