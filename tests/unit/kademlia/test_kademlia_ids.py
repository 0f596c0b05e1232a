"""Node ids, key ids, XOR distance and the persisted node id."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from spegel_kademlia.ids import (
    ID_BYTES,
    NODE_ID_FILE,
    bucket_index,
    distance,
    key_id,
    load_or_create_node_id,
    random_id,
    random_id_in_bucket,
)


def test_key_id_is_sha256_of_the_key_string() -> None:
    key = "sha256:" + "ab" * 32
    assert key_id(key) == hashlib.sha256(key.encode()).digest()
    assert len(key_id("docker.io/library/alpine:3.20")) == ID_BYTES


def test_distance_and_bucket_index() -> None:
    own = bytes(32)
    assert distance(own, own) == 0
    assert bucket_index(own, bytes(31) + b"\x01") == 0
    assert bucket_index(own, b"\x80" + bytes(31)) == 255
    assert bucket_index(own, bytes(30) + b"\x01\x00") == 8
    with pytest.raises(ValueError):
        bucket_index(own, own)


@pytest.mark.parametrize("index", [0, 1, 7, 100, 254, 255])
def test_random_id_in_bucket_lands_in_that_bucket(index: int) -> None:
    own = random_id()
    for _ in range(20):
        assert bucket_index(own, random_id_in_bucket(own, index)) == index


def test_node_id_is_created_once_and_reloaded(tmp_path: Path) -> None:
    first = load_or_create_node_id(tmp_path / "state")
    assert (tmp_path / "state" / NODE_ID_FILE).read_text().strip() == first.hex()
    assert load_or_create_node_id(tmp_path / "state") == first


def test_corrupt_node_id_file_is_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / NODE_ID_FILE).write_text("not hex")
    node_id = load_or_create_node_id(tmp_path)
    assert len(node_id) == ID_BYTES
    assert "making a new one" in caplog.text
    assert load_or_create_node_id(tmp_path) == node_id


def test_without_data_dir_ids_are_random() -> None:
    assert load_or_create_node_id(None) != load_or_create_node_id(None)
