"""Fuzz targets for what parses outside input: references and digests, Range headers, DHT
datagrams, and the extent of a peer's answer.

Each property runs ~100 examples in the suite and thousands under ``nox -s fuzz``
(``HYPOTHESIS_PROFILE=fuzz``); the datagram mutation loop scales with ``SPEGEL_FUZZ_SCALE``.
"""

from __future__ import annotations

import contextlib
import random
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from spegel_core.errors import OCIError, PeerError, RangeInvalid, RangeNotSatisfiable
from spegel_core.mirror.peer_checks import check_range, extent
from spegel_core.mirror.ranges import parse_range
from spegel_core.oci.digest import parse_digest
from spegel_core.oci.reference import (
    NAME_RE,
    TAG_RE,
    Reference,
    parse_manifest_reference,
    parse_name,
)
from spegel_core.registry_urls import registry_host
from spegel_kademlia.codec import Codec, DecodeError
from spegel_kademlia.messages import Message
from tests.fuzzing import fuzz_scale
from tests.unit.kademlia.test_kademlia_codec import messages

pytestmark = pytest.mark.fuzz

KEYS = [b"fuzz-cluster-key-0123456789abcdef", b"fuzz-cluster-key-second-89abcdef"]
SOURCE = ("127.0.0.1", 5001)

components = st.from_regex(r"[a-z0-9]{1,8}(?:[._-][a-z0-9]{1,8}){0,2}", fullmatch=True)
names = st.lists(components, min_size=1, max_size=4).map("/".join)
tags = st.from_regex(TAG_RE, fullmatch=True)
hosts = st.sampled_from(["docker.io", "ghcr.io", "127.0.0.1:5000", "[::1]:5000",
                         "registry.example.com:443", "localhost"])
digests = st.one_of(st.from_regex(r"sha256:[a-f0-9]{64}", fullmatch=True),
                    st.from_regex(r"sha512:[a-f0-9]{128}", fullmatch=True))
near_digests = st.from_regex(r"(?:sha256|sha512|md5|SHA256|)[:@]?[a-fA-F0-9/.]{0,130}",
                             fullmatch=True)


# -- references and digests ------------------------------------------------------------
@given(hosts, names, st.one_of(tags.map(lambda t: ":" + t), digests.map(lambda d: "@" + d)))
def test_valid_references_round_trip(host: str, name: str, suffix: str) -> None:
    assume(len(name) <= 255 and NAME_RE.fullmatch(name))
    reference = Reference.parse(f"{host}/{name}{suffix}")
    assert reference.registry == host and reference.repository == name
    assert Reference.parse(str(reference)) == reference


@given(st.one_of(st.text(max_size=300), near_digests, st.binary(max_size=200).map(
    lambda b: b.decode("latin-1"))))
@example("sha256:" + "a" * 64)
@example("a" * 256)
def test_reference_parsers_raise_only_oci_errors(text: str) -> None:
    for parse in (parse_digest, parse_name, parse_manifest_reference, Reference.parse):
        try:
            parse(text)
        except OCIError as exc:
            assert 400 <= exc.status < 500
    try:
        host = registry_host(text)
    except ValueError:
        pass
    else:
        assert "/" not in host and " " not in host  # never a path, never a URL


@given(near_digests)
def test_a_digest_is_valid_exactly_when_well_formed(text: str) -> None:
    algorithm, _, encoded = text.partition(":")
    expected = {"sha256": 64, "sha512": 128}.get(algorithm) == len(encoded) and \
        all(c in "0123456789abcdef" for c in encoded)
    try:
        parse_digest(text)
    except OCIError:
        assert not expected
    else:
        assert expected


# -- Range headers ---------------------------------------------------------------------
numbers = st.one_of(st.integers(0, 20), st.integers(0, 2**64)).map(str)
specs = st.one_of(
    st.tuples(numbers, st.one_of(st.just(""), numbers)).map("-".join),
    numbers.map(lambda n: "-" + n),
    st.text("0123456789-, ", max_size=12),
)
range_headers = st.one_of(
    st.lists(specs, min_size=1, max_size=3).map(lambda parts: "bytes=" + ",".join(parts)),
    st.text(max_size=40),
    st.builds(lambda unit, rest: f"{unit}={rest}", st.sampled_from(["bytes", "BYTES", "items"]),
              st.text("0123456789-,= ", max_size=20)),
)


def _valid_spec(part: str) -> bool:
    first, sep, last = part.partition("-")
    return bool(sep) and bool(first or last) and all(c in "0123456789" for c in first + last)


def reference_range(header: str, size: int) -> tuple[int, int] | str | None:
    """An independent reading of RFC 9110 for one range: (start, end), None (whole), or error."""
    unit, _, spec = header.strip().partition("=")
    parts = [part.strip() for part in spec.split(",")]
    if unit.strip().lower() != "bytes" or not all(_valid_spec(part) for part in parts):
        return "invalid"
    if len(parts) > 1:
        return None  # several ranges: the whole content
    first, _, last = parts[0].partition("-")
    if first:
        if last and int(last) < int(first):
            return "invalid"
        if int(first) >= size:
            return "unsatisfiable"
        return int(first), min(int(last) if last else size - 1, size - 1)
    if int(last) == 0 or size == 0:
        return "unsatisfiable"
    return max(0, size - int(last)), size - 1


@given(range_headers, st.one_of(st.integers(0, 100), st.integers(0, 2**63)))
@example("bytes=0-", 0)
@example("bytes=-5", 3)
def test_range_parser_agrees_with_a_reference(header: str, size: int) -> None:
    assume(len(header.strip()) <= 200 and header.isascii())
    expected = reference_range(header, size)
    try:
        got = parse_range(header, size)
    except RangeInvalid:
        assert expected == "invalid", header
        return
    except RangeNotSatisfiable:
        assert expected == "unsatisfiable", header
        return
    if got is None:
        assert expected is None
    else:
        assert (got.start, got.end) == expected
        assert 0 <= got.start <= got.end < size


# -- the extent of a peer's answer -------------------------------------------------------
header_values = st.one_of(st.none(), st.text(max_size=30),
                          st.integers(-5, 2**64).map(str),
                          st.builds(lambda a, b, c: f"bytes {a}-{b}/{c}", numbers, numbers,
                                    numbers))


@given(st.sampled_from([200, 206]), header_values, header_values,
       st.one_of(st.none(), range_headers))
def test_extent_of_a_peer_answer_is_sane_or_a_peer_error(status: int, length: str | None,
                                                          content_range: str | None,
                                                          asked: str | None) -> None:
    headers = {name: value for name, value in (("Content-Length", length),
                                               ("Content-Range", content_range)) if value}
    response: Any = SimpleNamespace(status=status, headers=headers)
    try:
        size, start, count = extent(response, asked)
        check_range(asked, size, start, count)
    except PeerError:
        return
    assert start >= 0 and count >= 0 and start + count <= size


# -- DHT datagrams -------------------------------------------------------------------------
keys = st.sampled_from([None, KEYS[0], KEYS])


@given(st.binary(max_size=1400), keys)
def test_any_datagram_decodes_or_is_a_decode_error(data: bytes, key: Any) -> None:
    codec = Codec(key)
    try:
        message = codec.decode(data, SOURCE)
    except DecodeError as exc:
        assert exc.reason
        return
    again = Codec(key).decode(Codec(key).encode(message), SOURCE)
    assert again.body == message.body


@given(st.data(), keys)
def test_mutated_datagrams_decode_or_are_a_decode_error(data: st.DataObject, key: Any) -> None:
    codec = Codec(key)
    message: Message = data.draw(messages)
    raw = bytearray(codec.encode(codec.fit(message)))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(raw)))
        operation = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if operation == "flip" and position < len(raw):
            raw[position] ^= data.draw(st.integers(1, 255))
        elif operation == "cut":
            del raw[position:]
        else:
            raw[position:position] = data.draw(st.binary(min_size=1, max_size=40))
    with contextlib.suppress(DecodeError):  # anything else fails the test
        Codec(key).decode(bytes(raw), SOURCE)


def test_datagram_mutation_loop() -> None:
    """A plain random loop next to hypothesis: cheap, so it runs many more datagrams."""
    rng = random.Random(77)
    codec = Codec(KEYS)
    for _ in range(2_000 * fuzz_scale()):
        data = rng.randbytes(rng.randint(0, 1300))
        if rng.random() < 0.5:
            data = b"SK\x02" + bytes([rng.randint(0, 12), rng.randint(0, 7)]) + data[5:]
        try:
            codec.decode(data, SOURCE)
        except DecodeError:
            continue
