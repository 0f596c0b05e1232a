"""Registry URLs as users write them (``https://registry-1.docker.io``, ``ghcr.io``)."""

from __future__ import annotations

from urllib.parse import urlsplit

from spegel_core.errors import NameInvalid
from spegel_core.oci.reference import parse_registry

_ALIASES = {"registry-1.docker.io": "docker.io", "index.docker.io": "docker.io"}


def registry_host(value: str) -> str:
    """The registry host (with port) a URL or bare host names; raises ValueError if invalid."""
    text = value.strip()
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise ValueError(f"invalid registry URL {text[:80]!r}")
        text = parts.netloc
    try:
        host = parse_registry(text)
    except NameInvalid as exc:
        raise ValueError(str(exc)) from None
    return _ALIASES.get(host, host)
