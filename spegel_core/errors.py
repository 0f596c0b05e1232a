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
    status = 400
    code = "NAME_INVALID"


class NameUnknown(OCIError):
    status = 404
    code = "NAME_UNKNOWN"


class DigestInvalid(OCIError):
    status = 400
    code = "DIGEST_INVALID"


class TagInvalid(OCIError):
    # The distribution spec has no TAG_INVALID; a bad tag is a bad manifest reference.
    status = 400
    code = "MANIFEST_INVALID"


class RangeInvalid(OCIError):
    status = 400
    code = "RANGE_INVALID"


class RangeNotSatisfiable(OCIError):
    status = 416
    code = "RANGE_INVALID"

    def __init__(self, message: str, *, size: int) -> None:
        super().__init__(message)
        self.size = size


class Unsupported(OCIError):
    status = 405
    code = "UNSUPPORTED"


class EndpointUnknown(OCIError):
    """A path that is not part of the pull API (tags/list, catalog, typos)."""

    status = 404
    code = "NOT_FOUND"


class NotFound(OCIError):
    """Content is not here (locally, or anywhere when the peer path has run)."""

    status = 404
    code = "BLOB_UNKNOWN"


class BlobUnknown(NotFound):
    code = "BLOB_UNKNOWN"


class ManifestUnknown(NotFound):
    code = "MANIFEST_UNKNOWN"


class ArrivingAborted(BlobUnknown):
    """Content that was arriving will not complete (its download failed or stalled)."""


class StoreUnavailable(OCIError):
    """The content store cannot answer right now (for example containerd is down)."""

    status = 503
    code = "UNAVAILABLE"


class PeerError(SpegelError):
    """A peer failed to serve content (connection, status or wrong bytes)."""
