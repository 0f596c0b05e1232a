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

from starlette.types import ASGIApp, Receive, Scope, Send

from spegel_core.config import SpegelConfig
from spegel_core.credentials import Credentials, load_credentials
from spegel_core.mirror.errors import oci_error_response

#: Paths that need credentials when auth is on: the whole registry API.
PROTECTED_PREFIX = "/v2"
CHALLENGE = 'Basic realm="spegel"'


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
        """Pass requests under ``/v2`` with valid credentials on; answer others there with 401."""
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
