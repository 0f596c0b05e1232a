"""One hierarchy of domain errors.

Every error the mirror can answer with maps to an HTTP status and an OCI error
code (``spegel_core.mirror.errors`` does the mapping). I/O edges translate
library exceptions into these with ``raise X(msg) from exc``.
"""

from __future__ import annotations


class SpegelError(Exception):
    """Base of every error raised by spegel itself."""


class ConfigError(SpegelError):
    """A setting has an invalid value. ``flag`` names the offending flag."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag}: {message}")
        self.flag = flag
        self.message = message


class PluginError(SpegelError):
    """A plugin could not be loaded, or no plugin provides what was asked for."""


class OCIError(SpegelError):
    """An error that the mirror answers with an OCI error body."""

    status: int = 400
    code: str = "UNSUPPORTED"

    def __init__(self, message: str, *, detail: object | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class NameInvalid(OCIError):
    """A repository name, registry host or ``ns`` parameter that is not valid."""

    status = 400
    code = "NAME_INVALID"


class NameUnknown(OCIError):
    """A repository (or registry) the mirror does not serve."""

    status = 404
    code = "NAME_UNKNOWN"


class DigestInvalid(OCIError):
    """A digest that is malformed or uses an unsupported algorithm."""

    status = 400
    code = "DIGEST_INVALID"


class TagInvalid(OCIError):
    """A manifest reference that is neither a tag nor a digest.

    The distribution spec has no TAG_INVALID, and its conformance suite expects a
    reference the registry cannot parse (``.INVALID_MANIFEST_NAME``) to be a manifest
    it does not know: 404 ``MANIFEST_UNKNOWN``. A malformed *digest* stays a 400
    ``DIGEST_INVALID`` (:class:`DigestInvalid`).
    """

    status = 404
    code = "MANIFEST_UNKNOWN"


class RangeInvalid(OCIError):
    """A ``Range`` header the mirror cannot parse or serve, or a negative offset or length."""

    status = 400
    code = "RANGE_INVALID"


class RangeNotSatisfiable(OCIError):
    """A range that does not overlap the content (416); ``size`` is the content's size."""

    status = 416
    code = "RANGE_INVALID"

    def __init__(self, message: str, *, size: int) -> None:
        super().__init__(message)
        self.size = size


class Unsupported(OCIError):
    """A method the mirror does not allow (it is read-only: no pushes or deletes)."""

    status = 405
    code = "UNSUPPORTED"


class EndpointUnknown(OCIError):
    """A path the mirror does not serve (tags/list, referrers, catalog, typos).

    404, as the spec asks of a registry without the optional referrers API, with the
    spec's code for an operation that is not implemented.
    """

    status = 404
    code = "UNSUPPORTED"


class NotFound(OCIError):
    """Content is not here (locally, or anywhere when the peer path has run)."""

    status = 404
    code = "BLOB_UNKNOWN"


class BlobUnknown(NotFound):
    """A blob that is not here (see :class:`NotFound`)."""

    code = "BLOB_UNKNOWN"


class ManifestUnknown(NotFound):
    """A manifest that is not here (see :class:`NotFound`)."""

    code = "MANIFEST_UNKNOWN"


class ArrivingAborted(BlobUnknown):
    """Content that was arriving will not complete (its download failed or stalled)."""


class StoreUnavailable(OCIError):
    """The content store cannot answer right now (for example containerd is down)."""

    status = 503
    code = "UNAVAILABLE"


class PeerError(SpegelError):
    """A peer failed to serve content.

    Raised by the peer path's I/O edge (:mod:`spegel_core.mirror.peer_checks` maps
    aiohttp's exceptions and a peer's answers to these types). The class says whom a
    failure counts against; ``kind`` is its label in counters (``digest``, ``stream``,
    ``status`` or ``connect``).
    """

    kind: str = "connect"


class PeerUnavailable(PeerError):
    """The peer could not serve anything right now: counts against the peer."""


class PeerConnectError(PeerUnavailable):
    """The connection was refused, reset or could not be made."""

    kind = "connect"


class PeerTimeout(PeerUnavailable):
    """The peer did not answer in time."""

    kind = "connect"


class PeerStreamBroken(PeerUnavailable):
    """A body broke off, stalled or ended before its announced length."""

    kind = "stream"


class PeerServerError(PeerUnavailable):
    """The peer answered with a 5xx status (its store is down, it is overloaded)."""

    kind = "status"


class PeerContentError(PeerError):
    """The peer answered, but not with the content asked for: counts against (peer, key).

    A stale advertisement or one corrupt file on the peer must not hide the rest of
    what the peer holds.
    """


class PeerNotFound(PeerContentError):
    """The peer answered 404 (or another status than the one asked for)."""

    kind = "status"


class PeerDigestMismatch(PeerContentError):
    """The bytes (or the digest the peer claims) do not match the digest asked for.

    Also raised when the answer is not a manifest and a manifest was asked for.
    """

    kind = "digest"


class PeerLengthMismatch(PeerContentError):
    """The peer sent more bytes, or another extent, than announced or asked for."""

    kind = "stream"


class PeerBadHeaders(PeerContentError):
    """The head of the answer is malformed (Content-Length, Content-Range, encoding)."""

    kind = "stream"


class PeersExhausted(PeerError):
    """No provider is left to resume a stream from (nobody is penalised for it)."""
