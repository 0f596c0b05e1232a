"""Single byte-range requests (RFC 9110 section 14)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from spegel_core.errors import RangeInvalid, RangeNotSatisfiable

_SPEC = re.compile(r"(\d*)-(\d*)")
MAX_RANGE_HEADER = 200


@dataclass(frozen=True, slots=True)
class ByteRange:
    """One byte range of a content, ``start`` to ``end`` inclusive."""

    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        """The number of bytes in the range."""
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        """The ``Content-Range`` header value for content of ``size`` bytes."""
        return f"bytes {self.start}-{self.end}/{size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The range to serve, or None for the whole content.

    A syntactically broken header is a 400 (``RANGE_INVALID``); a range that does
    not overlap the content is a 416; several ranges are answered with the whole
    content (RFC 9110 allows a server to ignore Range).
    """
    if header is None:
        return None
    text = header.strip()
    if len(text) > MAX_RANGE_HEADER:
        raise RangeInvalid("Range header too long")
    unit, sep, specs = text.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        raise RangeInvalid(f"unsupported Range {text[:60]!r}: only bytes=START-END")
    parts = [part.strip() for part in specs.split(",")]
    for part in parts:
        if not _SPEC.fullmatch(part) or part == "-":
            raise RangeInvalid(f"malformed Range {text[:60]!r}")
    if len(parts) > 1:
        return None
    first, _, last = parts[0].partition("-")
    if first:
        start = int(first)
        if last and int(last) < start:
            raise RangeInvalid(f"malformed Range {text[:60]!r}: end before start")
        end = int(last) if last else size - 1
        if start >= size:
            raise RangeNotSatisfiable(f"range starts at {start} but size is {size}", size=size)
        return ByteRange(start, min(end, size - 1))
    suffix = int(last)
    if suffix == 0 or size == 0:
        raise RangeNotSatisfiable("empty suffix range", size=size)
    return ByteRange(max(0, size - suffix), size - 1)
