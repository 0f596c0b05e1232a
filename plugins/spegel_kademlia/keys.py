"""Cluster keys from ``--cluster-key-file`` (a mounted Kubernetes Secret in production).

A key file holds one key: its contents with surrounding whitespace stripped, text or
bytes, at least :data:`~spegel_kademlia.auth.MIN_KEY_BYTES` long (for example the
output of ``head -c 32 /dev/urandom | base64``). During a key rotation a node holds
two keys, given either as two files (``--cluster-key-file new,old``) or as one text
file of two lines; the first key signs, every key is accepted. A file that is not
printable text is always one key, so a raw binary key is never split at a newline
byte it happens to contain.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from spegel_core.errors import ConfigError
from spegel_kademlia.auth import MAX_KEYS, MIN_KEY_BYTES

log = logging.getLogger(__name__)

FLAG = "--cluster-key-file"
#: Largest key file read (a key is a few dozen bytes; this only bounds a wrong path).
MAX_FILE_BYTES = 64 * 1024


def load_cluster_keys(paths: Sequence[str | Path]) -> list[bytes]:
    """The keys in ``paths``, first one first; raises :class:`ConfigError` naming the flag."""
    keys: list[bytes] = []
    for path in paths:
        keys.extend(_keys_in(Path(path)))
    if len(keys) > MAX_KEYS:
        raise ConfigError(FLAG, f"{len(keys)} keys given; at most {MAX_KEYS} (two for a rotation)")
    if len(set(keys)) != len(keys):
        raise ConfigError(FLAG, "the same key is given twice")
    return keys


def load_optional_cluster_keys(paths: Sequence[str | Path]) -> list[bytes] | None:
    """The keys in ``paths``, or None (an open DHT) when none of them exists.

    For an optional Secret (``--cluster-key-optional``): a missing key file means the
    cluster has none yet; a file that exists is read as :func:`load_cluster_keys` does.
    """
    if paths and not any(Path(path).exists() for path in paths):
        log.warning("no cluster key at %s (%s is optional): the DHT runs open; create the "
                    "Secret and restart the nodes to authenticate it (docs/install.md)",
                    ", ".join(str(p) for p in paths), FLAG)
        return None
    return load_cluster_keys(paths) if paths else None


def _keys_in(path: Path) -> list[bytes]:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(FLAG, f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(FLAG, f"{path} is larger than {MAX_FILE_BYTES} bytes; not a key file")
    data = data.strip()
    parts = [line.strip() for line in data.splitlines()] if _is_text(data) else [data]
    keys = [part for part in parts if part]
    if not keys:
        raise ConfigError(FLAG, f"{path} is empty")
    for number, key in enumerate(keys, 1):
        if len(key) < MIN_KEY_BYTES:
            where = f"line {number} of {path}" if len(keys) > 1 else str(path)
            raise ConfigError(FLAG, f"the key in {where} has {len(key)} bytes; at least "
                                    f"{MIN_KEY_BYTES} are needed (e.g. head -c 32 /dev/urandom "
                                    f"| base64)")
    return keys


def _is_text(data: bytes) -> bool:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(char.isprintable() or char in "\r\n\t" for char in text)
