"""Value types shared by every config model: durations, secrets, identifiers."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, SecretStr

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """`500ms`, `30s`, `5m`, `1h`, `1m30s` or a plain number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text like 500ms, 30s, 5m, 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        parts = _DURATION_PART.findall(text)
        if not text or "".join(n + u for n, u in parts) != text:
            try:
                seconds = float(text)
            except ValueError:
                raise ValueError(
                    f"{value!r} is not a duration: use 500ms, 30s, 5m, 1h or seconds"
                ) from None
        else:
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    else:
        raise ValueError("a duration is a number of seconds or text like 500ms, 30s, 5m, 1h")
    if math.isnan(seconds) or seconds < 0:
        raise ValueError("a duration must be zero or positive")
    return seconds


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than zero")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""A duration in seconds, written as `500ms`, `30s`, `5m`, `1h` or a number of seconds."""

PositiveDuration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive)]

_METRIC_ID = re.compile(r"custom:[A-Za-z0-9._,\-]+")
_DIMENSION_KEY = re.compile(r"[A-Za-z0-9._\-]+")


def shown_url(value: str) -> str:
    """A URL as an error message may show it: without user info, query or fragment, which
    may hold credentials (`https://user:pass@host`, `?Api-Token=...`)."""
    try:
        parts = urlsplit(value)
        has_user = parts.username is not None or parts.password is not None
    except ValueError:
        return "(not a URL)"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"***@{host}" if has_user else host, parts.path,
                       "..." if parts.query else "", "..." if parts.fragment else ""))


def check_metric_id(value: str) -> str:
    """Dynatrace's rules for custom metric ids (api-notes.md)."""
    if not value.startswith("custom:"):
        raise ValueError(f"metric id {value!r} must start with 'custom:'")
    if len(value) > 256:
        raise ValueError(f"metric id {value!r} is longer than 256 characters")
    if not _METRIC_ID.fullmatch(value):
        raise ValueError(
            f"metric id {value!r} may only use letters, digits, '.', '-', '_' and ','"
            " after 'custom:'"
        )
    body = value[len("custom:") :]
    if re.search(r"[._,\-]\d", body) or body[0].isdigit():
        raise ValueError(f"metric id {value!r}: a digit may not follow a punctuation mark")
    return value


def check_dimension_key(value: str) -> str:
    if not value or len(value) > 128 or not _DIMENSION_KEY.fullmatch(value):
        raise ValueError(
            f"dimension key {value!r} must be 1-128 letters, digits, '.', '-' or '_'"
        )
    return value


def check_properties(value: dict[str, str]) -> dict[str, str]:
    """The limits Dynatrace puts on custom device properties (api-notes.md)."""
    if len(value) > 20:
        raise ValueError("at most 20 properties per device")
    for key, val in value.items():
        if len(key) > 100 or len(val) > 200:
            raise ValueError(f"property {key!r}: keys at most 100, values 200 characters")
    return value


Properties = Annotated[dict[str, str], AfterValidator(check_properties)]
MetricId = Annotated[str, AfterValidator(check_metric_id)]
DimensionKey = Annotated[str, AfterValidator(check_dimension_key)]


class StrictModel(BaseModel):
    """Every config model: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def read_secret_file(path: Path) -> SecretStr:
    """The stripped content of a secret file; OSError names the file, never the content."""
    if path.stat().st_mode & 0o044:
        # stdlib logging: before logging is set up this still reaches stderr.
        logging.getLogger("collector.config").warning(
            "secret file %s is readable by other users; chmod 600 it", path)
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise ValueError(f"secret file {path} is empty")
    return SecretStr(text)


def pick_secret(
    inline: SecretStr | None, file: Path | None, what: str
) -> SecretStr | None:
    """The secret from exactly one of an inline value or a file (raises if both)."""
    if inline is not None and file is not None:
        raise ValueError(f"give {what} or {what}_file, not both")
    if file is not None:
        from collector.systemd import credential_path  # a LoadCredential= name works too

        try:
            return read_secret_file(credential_path(file))
        except OSError as exc:
            raise ValueError(f"cannot read {what}_file {file}: {exc.strerror}") from None
    if inline is not None and not inline.get_secret_value():
        return None
    return inline
