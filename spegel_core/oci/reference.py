"""Image references: ``registry/repository:tag`` and ``registry/repository@digest``.

Grammar from the OCI distribution spec (repository name components, tag syntax)
and the docker reference grammar for the registry host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from spegel_core.errors import NameInvalid, TagInvalid
from spegel_core.oci.digest import is_digest, parse_digest

DEFAULT_REGISTRY = "docker.io"

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
# A registry host: DNS labels or an IPv4 address, or a bracketed IPv6 address; optional port.
_LABEL = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)"
REGISTRY_RE = re.compile(
    rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?"
)
MAX_NAME_LENGTH = 255


def parse_name(name: str) -> str:
    """Validate a repository name (``library/demo``)."""
    if not name or len(name) > MAX_NAME_LENGTH or not NAME_RE.fullmatch(name):
        raise NameInvalid(f"invalid repository name {name[:80]!r}")
    return name


def parse_tag(tag: str) -> str:
    """Validate a tag (``v1.2``, ``latest``).

    :raises TagInvalid: not a valid tag (answered as an unknown manifest).
    """
    if not TAG_RE.fullmatch(tag):
        raise TagInvalid(f"invalid tag {tag[:80]!r}")
    return tag


def parse_registry(registry: str) -> str:
    """Validate a registry host (``docker.io``, ``127.0.0.1:5000``, ``[::1]:5000``)."""
    if not registry or len(registry) > 255 or not REGISTRY_RE.fullmatch(registry):
        raise NameInvalid(f"invalid registry {registry[:80]!r}")
    port = registry.rpartition("]")[2].rpartition(":")[2] if ":" in registry else ""
    if port and registry.rpartition(":")[0] and not 0 < int(port) < 65536:
        raise NameInvalid(f"invalid registry port in {registry[:80]!r}")
    return registry


def strip_port(registry: str) -> str:
    """The registry host without its port, as containerd labels it."""
    if registry.startswith("["):
        return registry[: registry.index("]") + 1]
    return registry.split(":", 1)[0]


@dataclass(frozen=True, slots=True)
class Reference:
    """A validated image reference. Exactly one of ``tag``/``digest`` may be None."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __post_init__(self) -> None:
        parse_registry(self.registry)
        parse_name(self.repository)
        if self.tag is not None:
            parse_tag(self.tag)
        if self.digest is not None:
            parse_digest(self.digest)
        if self.tag is None and self.digest is None:
            raise TagInvalid("a reference needs a tag or a digest")

    @classmethod
    def parse(cls, value: str) -> Reference:
        """Parse a full reference such as ``docker.io/library/demo:v1``.

        The first path component is the registry (it must contain ``.`` or ``:``
        or be ``localhost``); otherwise ``docker.io`` is assumed, as docker does.
        """
        rest = value
        digest = None
        if "@" in rest:
            rest, digest = rest.rsplit("@", 1)
        tag = None
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1 :]
        first, sep, remainder = rest.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
            registry, repository = first, remainder
        else:
            registry, repository = DEFAULT_REGISTRY, rest
            if "/" not in repository:
                repository = f"library/{repository}"
        return cls(registry, repository, tag, digest)

    @property
    def identifier(self) -> str:
        """The tag if there is one, else the digest (what follows ``/manifests/``)."""
        return self.tag if self.tag is not None else str(self.digest)

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse_manifest_reference(value: str) -> tuple[str | None, str | None]:
    """``/manifests/<reference>``: returns ``(tag, None)`` or ``(None, digest)``."""
    if ":" in value or is_digest(value):
        return None, parse_digest(value)
    return parse_tag(value), None
