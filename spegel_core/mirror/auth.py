"""``--basic-auth-dir``: HTTP basic auth on every mirror request, as the Go original.

The directory holds two files, ``username`` and ``password`` (the original's chart
mounts a Secret at ``/etc/secrets/basic-auth``). When it is set, every request to
``/v2/...`` must carry ``Authorization: Basic base64(username:password)``;
anything else gets ``401 UNAUTHORIZED`` with ``WWW-Authenticate: Basic``. The
probes (``/livez``, ``/readyz``) stay open for the kubelet. Credentials are compared
in constant time. Peers send the same header (the peer session's default headers),
and ``spegel configuration --basic-auth-dir`` writes it into ``hosts.toml``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass, field
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from spegel_core.config import SpegelConfig
from spegel_core.mirror.errors import oci_error_response

#: Paths that need credentials when auth is on: the whole registry API.
PROTECTED_PREFIX = "/v2"
CHALLENGE = 'Basic realm="spegel"'


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


def peer_headers(config: SpegelConfig) -> tuple[tuple[str, str], ...]:
    """Headers every request to a peer's mirror carries: the credentials, when set."""
    if config.core.basic_auth_dir is None:
        return ()
    return (("Authorization", load_credentials(config.core.basic_auth_dir).header),)


class BasicAuthMiddleware:
    """Answers 401 to registry API requests without the right credentials."""

    def __init__(self, app: ASGIApp, credentials: Credentials) -> None:
        self.app = app
        self.credentials = credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not (path == PROTECTED_PREFIX
                                           or path.startswith(PROTECTED_PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        if self.credentials.check(authorization):
            await self.app(scope, receive, send)
            return
        response = oci_error_response(401, "UNAUTHORIZED", "authentication required",
                                      {"WWW-Authenticate": CHALLENGE})
        await response(scope, receive, send)

    def __repr__(self) -> str:
        return f"<BasicAuthMiddleware user={self.credentials.username!r}>"
