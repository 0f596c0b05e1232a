from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spegel_core.errors import DigestInvalid, NameInvalid, RangeInvalid, RangeNotSatisfiable
from spegel_core.mirror.ranges import ByteRange, parse_range
from spegel_core.oci.digest import compute_digest, parse_digest
from spegel_core.oci.mediatypes import OCI_INDEX, OCI_MANIFEST, sniff_manifest_type
from spegel_core.oci.reference import Reference, parse_manifest_reference, parse_name
from spegel_core.registry_urls import registry_host

GOOD = "sha256:" + "a" * 64


@pytest.mark.parametrize("value", [
    "", "sha256", "sha256:", "sha256:" + "A" * 64, "sha256:" + "a" * 63, "md5:" + "a" * 32,
    "sha256:../../../../etc/passwd", "sha256:" + "a" * 63 + "/", "sha512:" + "a" * 64,
])
def test_bad_digests_are_rejected(value: str) -> None:
    with pytest.raises(DigestInvalid):
        parse_digest(value)


def test_good_digests() -> None:
    assert parse_digest(GOOD) == GOOD
    assert parse_digest("sha512:" + "0" * 128)
    assert compute_digest(b"") == (
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


@pytest.mark.parametrize("text, expected", [
    ("docker.io/library/demo:v1", ("docker.io", "library/demo", "v1", None)),
    ("demo:v1", ("docker.io", "library/demo", "v1", None)),
    ("ghcr.io/org/app/sub:1.2.3", ("ghcr.io", "org/app/sub", "1.2.3", None)),
    ("127.0.0.1:5000/x/y:t", ("127.0.0.1:5000", "x/y", "t", None)),
    (f"quay.io/a/b@{GOOD}", ("quay.io", "a/b", None, GOOD)),
    ("localhost/a:b", ("localhost", "a", "b", None)),
])
def test_reference_parse(text: str, expected: tuple[str, str, str | None, str | None]) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == expected
    assert Reference.parse(str(ref)) == ref


@pytest.mark.parametrize("name", ["", "UPPER/case", "a//b", "-a", "a/", "a" * 256, "a b",
                                  "../etc", "a/../b"])
def test_bad_names(name: str) -> None:
    with pytest.raises(NameInvalid):
        parse_name(name)


def test_manifest_reference() -> None:
    assert parse_manifest_reference("v1") == ("v1", None)
    assert parse_manifest_reference(GOOD) == (None, GOOD)
    with pytest.raises(DigestInvalid):
        parse_manifest_reference("sha256:nothex")


@pytest.mark.parametrize("value, host", [
    ("https://registry-1.docker.io", "docker.io"), ("docker.io", "docker.io"),
    ("http://127.0.0.1:15000", "127.0.0.1:15000"), ("ghcr.io", "ghcr.io"),
])
def test_registry_host(value: str, host: str) -> None:
    assert registry_host(value) == host


@pytest.mark.parametrize("value", ["ftp://x.io", "https://x.io/path", "not a host", "x.io:99999"])
def test_registry_host_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        registry_host(value)


@pytest.mark.parametrize("header, size, expected", [
    (None, 10, None),
    ("bytes=0-4", 10, ByteRange(0, 4)),
    ("bytes=5-", 10, ByteRange(5, 9)),
    ("bytes=-3", 10, ByteRange(7, 9)),
    ("bytes=-30", 10, ByteRange(0, 9)),
    ("bytes=2-100", 10, ByteRange(2, 9)),
    ("bytes=0-1,4-5", 10, None),
])
def test_ranges(header: str | None, size: int, expected: ByteRange | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header", ["bytes", "items=0-1", "bytes=a-b", "bytes=5-2", "bytes=-",
                                    "bytes=0-1;", "bytes=" + "1" * 300])
def test_malformed_ranges(header: str) -> None:
    with pytest.raises(RangeInvalid):
        parse_range(header, 10)


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=10-20", "bytes=-0"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 10)


@pytest.mark.fuzz
@given(st.text(max_size=60), st.integers(min_value=0, max_value=2**40))
def test_range_parser_never_raises_anything_else(header: str, size: int) -> None:
    try:
        result = parse_range(header, size)
    except (RangeInvalid, RangeNotSatisfiable):
        return
    if result is not None:
        assert 0 <= result.start <= result.end < size


@pytest.mark.fuzz
@given(st.text(max_size=300))
def test_reference_parsers_never_raise_anything_else(text: str) -> None:
    from spegel_core.errors import OCIError

    for parse in (parse_digest, parse_name, parse_manifest_reference, Reference.parse):
        with contextlib.suppress(OCIError):  # DigestInvalid, NameInvalid, TagInvalid: 4xx
            parse(text)  # type: ignore[operator]


def test_sniff() -> None:
    assert sniff_manifest_type(b'{"manifests": []}') == OCI_INDEX
    assert sniff_manifest_type(b'{"config": {}, "layers": []}') == OCI_MANIFEST
    assert sniff_manifest_type(b"\x1f\x8b binary") is None
    assert sniff_manifest_type(b"[1, 2]") is None
