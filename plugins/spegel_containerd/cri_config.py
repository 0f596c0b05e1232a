"""Start-up warnings where containerd's CRI configuration makes the mirror useless.

The CRI plugin reports its configuration in the verbose answer of
``runtime.v1.RuntimeService/Status`` (``info["config"]``, JSON): the same call
``crictl info`` makes. From it and containerd's version:

- no registry ``config_path``: containerd never reads ``hosts.toml``, so no pull asks
  the mirror;
- ``discard_unpacked_layers = true``: layers are deleted once unpacked, so this node
  has nothing to serve to its peers;
- containerd 2.x pulling through the transfer service (``use_local_image_pull =
  false``, the default, and layers kept): the transfer service takes ``config_path`` as
  one directory, so a list such as ``/etc/containerd/certs.d:/etc/docker/certs.d``
  (EKS's) means the mirror is never asked (containerd#12415, Spegel#1272).

Only warnings: a node without the CRI plugin (``ctr`` only, tests) gets none. The
messages are two requests apart from the wire: a hand-written encoder and decoder of
the two small messages, so no CRI stubs are needed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)

STATUS_METHOD = "/runtime.v1.RuntimeService/Status"
#: ``StatusRequest{verbose: true}``: field 1, varint 1.
VERBOSE_STATUS_REQUEST = b"\x08\x01"
DOCS = "docs/containerd.md#containerd-2x"


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position


def _fields(data: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    """``(number, wire type, value)`` of each field of a protobuf message."""
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, kind = key >> 3, key & 7
        if kind == 0:
            value, position = _varint(data, position)
            yield number, kind, value
        elif kind == 2:
            length, position = _varint(data, position)
            if position + length > len(data):
                raise ValueError("truncated field")
            yield number, kind, data[position:position + length]
            position += length
        elif kind in (1, 5):
            position += 8 if kind == 1 else 4
        else:
            raise ValueError(f"unsupported wire type {kind}")


def decode_status_info(data: bytes) -> dict[str, str]:
    """The ``info`` map (field 2) of a ``StatusResponse``; ValueError if malformed."""
    info: dict[str, str] = {}
    for number, kind, value in _fields(data):
        if number != 2 or kind != 2 or not isinstance(value, bytes):
            continue
        entry = {n: v for n, k, v in _fields(value) if k == 2 and isinstance(v, bytes)}
        info[entry.get(1, b"").decode("utf-8", "replace")] = entry.get(2, b"").decode(
            "utf-8", "replace")
    return info


def probe_cri_config(socket: Path, timeout: float = 3.0) -> dict[str, Any] | None:
    """The CRI plugin's configuration, or None when there is no CRI plugin to ask."""
    try:
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            status = channel.unary_unary(STATUS_METHOD, request_serializer=lambda raw: raw,
                                         response_deserializer=lambda raw: raw)
            raw = status(VERBOSE_STATUS_REQUEST, timeout=timeout)
        info = decode_status_info(raw)
    except (grpc.RpcError, ValueError) as exc:
        log.debug("no CRI configuration from %s: %s", socket, exc)
        return None
    config: dict[str, Any] = {}
    for value in info.values():
        try:
            document = json.loads(value)
        except ValueError:
            continue
        if isinstance(document, dict):
            config.update(document)
    return config or None


def _find(document: object, *names: str) -> object:
    """The first value under any of ``names`` (camelCase or snake_case), depth first."""
    wanted = {name.replace("_", "").lower() for name in names}
    if isinstance(document, Mapping):
        for key, value in document.items():
            if str(key).replace("_", "").lower() in wanted:
                return value
        for value in document.values():
            found = _find(value, *names)
            if found is not None:
                return found
    return None


def _major(version: str) -> int | None:
    head = version.strip().lstrip("v").split(".", 1)[0]
    return int(head) if head.isdigit() else None


def mirror_warnings(version: str, config: Mapping[str, Any] | None) -> list[str]:
    """What in containerd's version and CRI ``config`` keeps pulls from the mirror."""
    if not config:
        return []
    warnings = []
    config_path = _find(config, "config_path")
    discard = _find(config, "discard_unpacked_layers") is True
    local_pull = _find(config, "use_local_image_pull")
    if not config_path:
        warnings.append(
            "containerd's CRI registry config_path is not set: containerd ignores every "
            "hosts.toml, so no image pull asks this mirror (set config_path = "
            f"\"/etc/containerd/certs.d\"; {DOCS})")
    if discard:
        warnings.append(
            "containerd runs with discard_unpacked_layers = true: it deletes layers once "
            "they are unpacked, so this node cannot serve them to its peers (set it to "
            f"false; {DOCS})")
    major = _major(version)
    if major is not None and major >= 2 and local_pull is not True and not discard:
        if isinstance(config_path, str) and ":" in config_path:
            warnings.append(
                f"containerd {version} pulls through its transfer service "
                "(use_local_image_pull = false), which reads config_path as one directory: "
                f"with config_path = {config_path!r} the hosts.toml mirrors are ignored (set "
                "use_local_image_pull = true in [plugins.'io.containerd.cri.v1.images'], or "
                f"config_path to one directory; {DOCS})")
        elif local_pull is None:
            warnings.append(
                f"containerd {version}: cannot tell whether CRI pulls use the transfer "
                "service; if no pull reaches this mirror, set use_local_image_pull = true "
                f"in [plugins.'io.containerd.cri.v1.images'] ({DOCS})")
    return warnings


def log_mirror_warnings(socket: Path, version: str, timeout: float = 3.0) -> list[str]:
    """Probe the CRI plugin and log each warning; returns them (for tests)."""
    warnings = mirror_warnings(version, probe_cri_config(socket, timeout))
    for warning in warnings:
        log.warning("%s", warning)
    return warnings
