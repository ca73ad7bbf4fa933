"""Values out of message payloads: fields of parsed JSON, plain numbers, booleans, timestamps.

Every function returns the value or raises `BadPayload` with a short reason (a telemetry
label) and a detail for the log. Nothing here knows about a protocol.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Literal

TimestampFormat = Literal["s", "ms", "iso8601"]

_TRUE = frozenset({"1", "true", "on"})
_FALSE = frozenset({"0", "false", "off"})


class BadPayload(Exception):
    """A payload (or one field of it) that gives no reading; `reason` is a telemetry label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def lookup(document: object, path: tuple[str | int, ...]) -> object:
    """The value at `path` (keys and list indexes) in a parsed JSON document."""
    node = document
    for step in path:
        if isinstance(step, int):
            if not isinstance(node, list) or not -len(node) <= step < len(node):
                raise BadPayload("missing_field", f"no list item [{step}]")
            node = node[step]
        else:
            if not isinstance(node, dict) or step not in node:
                raise BadPayload("missing_field", f"no key {step!r}")
            node = node[step]
    return node


def to_number(value: object) -> float:
    """A JSON number, or a JSON boolean as 1/0, as a finite float."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if not isinstance(value, int | float):
        raise BadPayload("not_a_number", f"{type(value).__name__} {str(value)[:40]!r}")
    return finite(value)


def finite(value: float) -> float:
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range
        number = math.inf
    if not math.isfinite(number):
        raise BadPayload("not_finite", f"{value!r}"[:40])
    return number


def parse_number(payload: bytes) -> float:
    """A payload that is one number in text, e.g. b"21.5"."""
    try:
        number = float(payload.decode("utf-8").strip())
    except (UnicodeDecodeError, ValueError):
        raise BadPayload("not_a_number", repr(payload[:40])) from None
    return finite(number)


def parse_boolean(payload: bytes) -> float:
    """A payload that is 0/1 (also true/false, on/off, any case) -> 0.0 or 1.0."""
    text = payload.decode("utf-8", "replace").strip().lower()
    if text in _TRUE:
        return 1.0
    if text in _FALSE:
        return 0.0
    raise BadPayload("not_a_boolean", repr(payload[:40]))


def timestamp_ms(value: object, fmt: TimestampFormat) -> int:
    """Epoch milliseconds from a number of seconds or ms, or an ISO-8601 text (UTC if no zone)."""
    if fmt == "iso8601":
        if isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value)
            except ValueError:
                pass
            else:
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=UTC)
                return round(moment.timestamp() * 1000)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value) * (1000 if fmt == "s" else 1)
        except OverflowError:
            number = math.inf
        if math.isfinite(number) and number > 0:
            return round(number)
    raise BadPayload("bad_timestamp", f"{str(value)[:40]!r} is not a timestamp in {fmt}")
