"""Node ids, key ids, XOR distance and contacts.

Node ids and key ids live in the same 256-bit space: a key id is the sha256 of the
key string (a digest ``sha256:...`` or a tag reference ``registry/repo:tag``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: Length of node and key ids in bytes (256 bits).
ID_BYTES = 32
#: Length of node and key ids in bits; also the number of k-buckets.
ID_BITS = ID_BYTES * 8
#: File under the data directory that keeps the node id across restarts (hex, one line).
NODE_ID_FILE = "node_id"


@dataclass(slots=True, unsafe_hash=True)
class Contact:
    """A DHT node: its id and the UDP address its router listens on.

    Hashable by value and never mutated: treat it as frozen. (Not ``frozen=True``:
    20 are built per answer received, and a frozen dataclass's ``__init__`` costs
    three times as much.)
    """

    node_id: bytes
    host: str
    port: int

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` as the socket API wants it."""
        return (self.host, self.port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.node_id.hex()[:12]}@{host}:{self.port}"


def key_id(key: str) -> bytes:
    """The 256-bit id of a key string: ``sha256(key.encode())``."""
    return hashlib.sha256(key.encode()).digest()


def random_id() -> bytes:
    """A fresh random node id."""
    return secrets.token_bytes(ID_BYTES)


def distance(a: bytes, b: bytes) -> int:
    """XOR distance between two ids, as an integer."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def bucket_index(own: bytes, other: bytes) -> int:
    """Index of the k-bucket ``other`` falls in, seen from ``own``.

    Bucket ``i`` holds the ids whose distance lies in ``[2**i, 2**(i+1))``: bucket 255 is
    the far half of the space, low buckets are close neighbours. Raises ``ValueError``
    for ``other == own`` (a node is in none of its own buckets).
    """
    d = distance(own, other)
    if d == 0:
        raise ValueError("an id has no bucket relative to itself")
    return d.bit_length() - 1


def random_id_in_bucket(own: bytes, index: int) -> bytes:
    """A random id that falls in bucket ``index`` of ``own`` (used to refresh a bucket)."""
    if not 0 <= index < ID_BITS:
        raise ValueError(f"bucket index {index} out of range")
    offset = (1 << index) | secrets.randbits(index)
    value = int.from_bytes(own, "big") ^ offset
    return value.to_bytes(ID_BYTES, "big")


def load_or_create_node_id(data_dir: Path | None) -> bytes:
    """The node id kept under ``data_dir``, creating (and saving) one if there is none.

    Without a data directory the id is random and lives as long as the process. A file
    that cannot be read or parsed is replaced with a new id (and a warning).
    """
    if data_dir is None:
        return random_id()
    path = Path(data_dir) / NODE_ID_FILE
    try:
        text = path.read_text(encoding="ascii").strip()
        node_id = bytes.fromhex(text)
        if len(node_id) == ID_BYTES:
            return node_id
        log.warning("node id in %s has %d bytes, expected %d; making a new one",
                    path, len(node_id), ID_BYTES)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        log.warning("cannot read node id from %s (%s); making a new one", path, exc)
    node_id = random_id()
    save_node_id(data_dir, node_id)
    return node_id


def save_node_id(data_dir: Path, node_id: bytes) -> None:
    """Write ``node_id`` under ``data_dir`` atomically; log (not raise) if that fails."""
    if len(node_id) != ID_BYTES:
        raise ValueError(f"a node id has {ID_BYTES} bytes, got {len(node_id)}")
    path = Path(data_dir) / NODE_ID_FILE
    tmp = path.with_name(f".{NODE_ID_FILE}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(node_id.hex() + "\n", encoding="ascii")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot save node id to %s (%s); it will change on restart", path, exc)
        tmp.unlink(missing_ok=True)
