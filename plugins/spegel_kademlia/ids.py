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
#: Most addresses a contact (or a provider entry) carries: e.g. a dual-stack node's
#: IPv4 and IPv6 address, and one more while it moves.
MAX_ADDRESSES = 3


@dataclass(slots=True, unsafe_hash=True)
class Contact:
    """A DHT node: its id and the UDP address its router listens on.

    ``host``/``port`` is the preferred address; ``more`` holds the node's other known
    addresses, best first (at most :data:`MAX_ADDRESSES` in all), e.g. the IPv6
    address of a dual-stack node heard from over IPv4 too. A routing table learns
    each of them from a datagram's source address, never from a payload that
    announces it (``docs/discovery.md``, "Contacts with several addresses").

    Hashable by value and never mutated: treat it as frozen. (Not ``frozen=True``:
    20 are built per answer received, and a frozen dataclass's ``__init__`` costs
    three times as much.)
    """

    node_id: bytes
    host: str
    port: int
    more: tuple[tuple[str, int], ...] = ()

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` as the socket API wants it (the preferred address)."""
        return (self.host, self.port)

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """Every known ``(host, port)``, the preferred one first."""
        return ((self.host, self.port), *self.more)

    def __str__(self) -> str:
        return f"{self.node_id.hex()[:12]}@" + ",".join(
            f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.addresses)


def with_addresses(contact: Contact, addresses: tuple[tuple[str, int], ...]) -> Contact:
    """``contact`` at ``addresses`` (the first preferred; at most :data:`MAX_ADDRESSES`).

    :param contact: the node.
    :param addresses: its addresses, best first; duplicates are dropped.
    :returns: the same object when nothing changes.
    :raises ValueError: no address given.
    """
    unique = tuple(dict.fromkeys(addresses))[:MAX_ADDRESSES]
    if not unique:
        raise ValueError("a contact needs at least one address")
    if unique == contact.addresses:
        return contact
    (host, port), *more = unique
    return Contact(contact.node_id, host, port, tuple(more))


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
