"""Values out of payloads: field lookup, numbers, booleans, timestamps, and why they fail."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.sources.payload import (
    BadPayload,
    lookup,
    parse_boolean,
    parse_number,
    timestamp_ms,
    to_number,
)

DOC = {"env": {"t": 21.5, "list": [{"v": 1}, {"v": 2}]}, "ok": True, "s": "12"}


@pytest.mark.parametrize(("path", "expected"), [
    (("env", "t"), 21.5), (("env", "list", 1, "v"), 2), (("env", "list", -2, "v"), 1),
    (("ok",), True)])
def test_lookup_finds_nested_keys_and_list_items(path: tuple[str | int, ...],
                                                 expected: object) -> None:
    assert lookup(DOC, path) == expected


@pytest.mark.parametrize("path", [("nope",), ("env", "list", 2), ("env", "list", -3),
                                  ("env", 0), ("env", "t", "x"), ("env", "list", "v")])
def test_lookup_of_what_is_not_there_is_a_missing_field(path: tuple[str | int, ...]) -> None:
    with pytest.raises(BadPayload) as caught:
        lookup(DOC, path)
    assert caught.value.reason == "missing_field"


@pytest.mark.parametrize(("value", "expected"), [
    (True, 1.0), (False, 0.0), (3, 3.0), (-2.5, -2.5), (10**20, 1e20)])
def test_numbers_and_booleans_are_values(value: object, expected: float) -> None:
    assert to_number(value) == expected


@pytest.mark.parametrize(("value", "reason"), [
    ("12", "not_a_number"), (None, "not_a_number"), ([1], "not_a_number"),
    ({"v": 1}, "not_a_number"), (10**400, "not_finite"), (math.inf, "not_finite"),
    (math.nan, "not_finite")])
def test_other_json_values_are_not(value: object, reason: str) -> None:
    with pytest.raises(BadPayload) as caught:
        to_number(value)
    assert caught.value.reason == reason


@pytest.mark.parametrize(("payload", "expected"), [
    (b"21.5", 21.5), (b" -4e1\n", -40.0), (b"7", 7.0), (b"0.000", 0.0)])
def test_plain_number_payloads(payload: bytes, expected: float) -> None:
    assert parse_number(payload) == expected


@pytest.mark.parametrize(("payload", "reason"), [
    (b"", "not_a_number"), (b"twelve", "not_a_number"), (b"\xff1", "not_a_number"),
    (b"1,5", "not_a_number"), (b"nan", "not_finite"), (b"-Infinity", "not_finite"),
    (b"1e999", "not_finite")])
def test_bad_plain_number_payloads(payload: bytes, reason: str) -> None:
    with pytest.raises(BadPayload) as caught:
        parse_number(payload)
    assert caught.value.reason == reason


@pytest.mark.parametrize(("payload", "expected"), [
    (b"1", 1.0), (b"0", 0.0), (b"true", 1.0), (b"FALSE", 0.0), (b" on\n", 1.0), (b"Off", 0.0)])
def test_boolean_payloads(payload: bytes, expected: float) -> None:
    assert parse_boolean(payload) == expected


@pytest.mark.parametrize("payload", [b"", b"2", b"yes", b"\xff", b"1.0"])
def test_bad_boolean_payloads(payload: bytes) -> None:
    with pytest.raises(BadPayload) as caught:
        parse_boolean(payload)
    assert caught.value.reason == "not_a_boolean"


@pytest.mark.parametrize(("value", "fmt", "expected"), [
    (1_795_000_000, "s", 1_795_000_000_000), (1_795_000_000.1234, "s", 1_795_000_000_123),
    (1_795_000_000_123, "ms", 1_795_000_000_123), (1_795_000_000_123.6, "ms", 1_795_000_000_124),
    ("2026-11-18T11:06:40Z", "iso8601", 1_795_000_000_000),
    ("2026-11-18T11:06:40.5+00:00", "iso8601", 1_795_000_000_500),
    ("2026-11-18T06:06:40-05:00", "iso8601", 1_795_000_000_000),
    ("2026-11-18 11:06:40", "iso8601", 1_795_000_000_000)])
def test_timestamps(value: object, fmt: str, expected: int) -> None:
    assert timestamp_ms(value, fmt) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "fmt"), [
    ("1795000000", "s"), (True, "ms"), (None, "s"), (-5, "s"), (0, "ms"), (math.nan, "ms"),
    (10**400, "s"), (1_795_000_000, "iso8601"), ("yesterday", "iso8601"), ("", "iso8601")])
def test_bad_timestamps(value: object, fmt: str) -> None:
    with pytest.raises(BadPayload) as caught:
        timestamp_ms(value, fmt)  # type: ignore[arg-type]
    assert caught.value.reason == "bad_timestamp"


@given(st.floats(allow_nan=False, allow_infinity=False, width=64))
def test_every_finite_number_payload_reads_back(value: float) -> None:
    assert parse_number(repr(value).encode()) == value
