"""Basic-auth credentials (``--basic-auth-dir``): reading them, and checking a header.

The mirror's middleware (:mod:`spegel_core.mirror.auth`) and the configuration check
at start both use these; this module imports nothing of the node.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Credentials", "load_credentials", "parse_basic"]


@dataclass(frozen=True)
class Credentials:
    """One username and password; ``repr`` never shows the password."""

    username: str
    password: str = field(repr=False)

    @property
    def header(self) -> str:
        """The ``Authorization`` header value that carries these credentials."""
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")
        return f"Basic {token}"

    def check(self, authorization: str | None) -> bool:
        """True when ``authorization`` carries these credentials (constant time)."""
        given = parse_basic(authorization) or ("", "")
        user_ok = hmac.compare_digest(_sha(given[0]), _sha(self.username))
        password_ok = hmac.compare_digest(_sha(given[1]), _sha(self.password))
        return bool(user_ok & password_ok) and authorization is not None


def _sha(text: str) -> bytes:
    # Equal-length digests, so the comparison time says nothing about either length.
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


def parse_basic(authorization: str | None) -> tuple[str, str] | None:
    """``(username, password)`` of a ``Basic`` header, or None when it is not one."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    username, sep, password = decoded.partition(":")
    return (username, password) if sep else None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None


def load_credentials(directory: Path) -> Credentials:
    """Read ``username`` and ``password`` from ``directory``; ValueError if unusable.

    A trailing newline (``echo secret > password``) is not part of the value.
    """
    username = _read(directory / "username")
    password = _read(directory / "password")
    if not username or not password:
        raise ValueError(f"{directory}: username and password must not be empty")
    if ":" in username:
        raise ValueError(f"{directory / 'username'}: a username cannot contain ':'")
    return Credentials(username, password)
