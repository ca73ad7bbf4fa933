"""The `type: mqtt` source config: the broker connection and the topic -> device mapping.

The text forms users write are defined here, once: topic patterns (`site/{site}/+/{device}/#`),
payload field paths (`readings[0].value`) and `{name}` templates. The source uses the parsed
forms from `parse_topic_pattern`, `parse_field_path` and `template_fields`.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    FilePath,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)

from collector.config.model import Config, Loc, SourceConfig
from collector.config.sources import register_source_config
from collector.config.types import (
    DimensionKey,
    Duration,
    MetricId,
    PositiveDuration,
    StrictModel,
    pick_secret,
    shown_url,
)

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PATH_TOKEN = re.compile(r"(?:^|\.)([^.\[\]]+)|\[(-?\d+)\]")


@dataclass(frozen=True)
class TopicPattern:
    """A parsed topic pattern: the MQTT filter to subscribe to and where its variables are."""

    levels: tuple[str | None, ...]
    """A literal level, or None for any one level (`+` or `{name}`)."""
    rest: bool
    """The pattern ends with `#` (any number of further levels, including none)."""
    variables: dict[str, int]
    """Variable name -> level index."""

    @property
    def filter(self) -> str:
        levels = ["+" if level is None else level for level in self.levels]
        return "/".join([*levels, "#"] if self.rest else levels)

    def match(self, topic: str) -> dict[str, str] | None:
        """The variables' values if `topic` matches, else None."""
        levels = topic.split("/")
        if len(levels) != len(self.levels) and not (self.rest and len(levels) > len(self.levels)):
            return None
        for want, got in zip(self.levels, levels, strict=False):
            if want is not None and want != got:
                return None
        return {name: levels[index] for name, index in self.variables.items()}

    def overlaps(self, other: TopicPattern) -> bool:
        """Whether one topic can match both (the broker would then deliver it twice)."""
        for mine, theirs in zip(self.levels, other.levels, strict=False):
            if mine is not None and theirs is not None and mine != theirs:
                return False
        if len(self.levels) == len(other.levels):
            return True
        shorter = self if len(self.levels) < len(other.levels) else other
        return shorter.rest


def parse_topic_pattern(text: str) -> TopicPattern:
    """`site/{site}/+/{device}/#` -> levels, variables and the filter `site/+/+/+/#`."""
    if not text:
        raise ValueError("a topic pattern must not be empty")
    if text.startswith("$share/"):
        raise ValueError("write the share group in share_group:, not as $share/ in the topic")
    parts = text.split("/")
    rest = parts[-1] == "#"
    if rest:
        parts.pop()
    levels: list[str | None] = []
    variables: dict[str, int] = {}
    for index, part in enumerate(parts):
        if part.startswith("{") and part.endswith("}") and _NAME.fullmatch(part[1:-1]):
            name = part[1:-1]
            if name in variables:
                raise ValueError(f"topic pattern {text!r} names {{{name}}} twice")
            variables[name] = index
            levels.append(None)
        elif part == "+":
            levels.append(None)
        elif any(c in part for c in "+#{}"):
            raise ValueError(
                f"topic pattern {text!r}: level {part!r} must be a literal, +, {{name}} "
                "(a whole level), or # (the last level)"
            )
        else:
            levels.append(part)
    return TopicPattern(tuple(levels), rest, variables)


def parse_field_path(text: str) -> tuple[str | int, ...]:
    """`readings[0].value` -> ("readings", 0, "value"); negative indexes count from the end."""
    parts: list[str | int] = []
    pos = 0
    while pos < len(text) and not text.startswith("."):
        match = _PATH_TOKEN.match(text, pos)
        if match is None:
            break
        key, index = match.groups()
        parts.append(key if key is not None else int(index))
        pos = match.end()
    if not parts or pos != len(text):
        raise ValueError(
            f"field path {text!r} must be keys separated by '.', with [n] for list items, "
            "e.g. readings[0].value"
        )
    return tuple(parts)


def template_fields(text: str) -> list[str]:
    """The `{name}` fields a template uses; ValueError on anything but plain names."""
    names = []
    for _, name, spec, conversion in string.Formatter().parse(text):
        if name is None:
            continue
        if spec or conversion or not _NAME.fullmatch(name):
            raise ValueError(f"template {text!r}: use plain {{name}} fields only")
        names.append(name)
    return names


def _field_path(value: str) -> str:
    parse_field_path(value)
    return value


def _template(value: str) -> str:
    template_fields(value)
    return value


def _protocol(value: object) -> object:
    # YAML reads `protocol: 5` as a number.
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


FieldPath = Annotated[str, AfterValidator(_field_path)]
Template = Annotated[str, AfterValidator(_template)]


class MqttTlsConfig(StrictModel):
    ca_file: FilePath | None = None
    """CA bundle to verify the broker with; the system's CAs when absent."""
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    verify: bool = True
    """Verify the broker's certificate and host name; false only for a lab broker."""


class DeviceTemplate(StrictModel):
    """How a custom device is made from a topic; values may use the pattern's {names}."""

    id: Template = "{device}"
    type: str = Field(min_length=1)
    display_name: Template | None = None
    group: Template | None = None
    tags: list[Template] = []
    properties: dict[str, Template] = {}


class TimestampConfig(StrictModel):
    field: FieldPath
    format: Literal["s", "ms", "iso8601"]


class MetricMapping(StrictModel):
    metric: MetricId
    field: FieldPath | None = None
    """Where the value is in a JSON payload; absent for number and boolean payloads."""
    scale: float = 1.0
    dimensions: dict[DimensionKey, Template] = {}


class Subscription(StrictModel):
    topic: str
    qos: Literal[0, 1, 2] = 1
    share_group: str | None = Field(None, pattern=r"^[^/+#]+$")
    payload: Literal["json", "number", "boolean"] = "json"
    device: DeviceTemplate
    dimensions: dict[DimensionKey, Template] = {}
    """Dimensions for every metric of this subscription (a metric's own ones win)."""
    timestamp: TimestampConfig | None = None
    metrics: list[MetricMapping] = Field(min_length=1)

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        parse_topic_pattern(value)
        return value

    @property
    def pattern(self) -> TopicPattern:
        return parse_topic_pattern(self.topic)

    @property
    def filter(self) -> str:
        """What to subscribe to, with the share group if any."""
        base = self.pattern.filter
        return f"$share/{self.share_group}/{base}" if self.share_group else base


@register_source_config
class MqttSourceConfig(SourceConfig):
    TYPE: ClassVar[str] = "mqtt"
    type: Literal["mqtt"]
    url: str
    protocol: Annotated[Literal["3.1.1", "5"], BeforeValidator(_protocol)] = "3.1.1"
    client_id: str | None = Field(None, min_length=1, max_length=65535)
    clean_session: bool = False
    session_expiry: Duration = 3600.0
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    tls: MqttTlsConfig | None = None
    keepalive: PositiveDuration = 60.0
    timeout: PositiveDuration = 10.0
    reconnect_delay: PositiveDuration = 1.0
    reconnect_max_delay: PositiveDuration = 60.0
    max_queued_messages: int = Field(10_000, ge=1)
    max_payload_bytes: int = Field(65_536, ge=1)
    subscriptions: list[Subscription] = Field(min_length=1)

    _password: SecretStr | None = PrivateAttr(default=None)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        shown = shown_url(value)  # never the credentials a URL may carry
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"url {shown!r} must be mqtt://host[:port] or mqtts://host[:port]")
        if parts.username is not None or parts.password is not None:
            raise ValueError("put credentials in username and password, not in the url")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"url {shown!r} must not have a path, query or fragment")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError(f"url {shown!r} has an invalid port") from None
        return value

    @field_validator("keepalive")
    @classmethod
    def _keepalive(cls, value: float) -> float:
        if value > 65535:
            raise ValueError("keepalive may be at most 65535s (18h12m15s)")
        return value

    @field_validator("session_expiry")
    @classmethod
    def _session_expiry(cls, value: float) -> float:
        if value >= 2**32 - 1:
            raise ValueError("session_expiry must be below 4294967295s (about 136 years)")
        return value

    @model_validator(mode="after")
    def _read_password(self) -> MqttSourceConfig:
        self._password = pick_secret(self.password, self.password_file, "password")
        return self

    @property
    def host(self) -> str:
        host = urlsplit(self.url).hostname
        assert host is not None  # checked by _url
        return host

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or DEFAULT_PORTS[parts.scheme]

    @property
    def uses_tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    def secret_password(self) -> SecretStr | None:
        """The password from `password` or `password_file`."""
        return self._password

    def check(self, config: Config, loc: Loc) -> list[tuple[Loc, str]]:
        issues: list[tuple[Loc, str]] = []
        if not self.clean_session and self.client_id is None:
            issues.append(((*loc, "client_id"), "a persistent session (clean_session: false) "
                           "needs a fixed client_id; set one, or clean_session: true"))
        if self.tls is not None and not self.uses_tls:
            issues.append(((*loc, "tls"), "tls: needs an mqtts:// url"))
        if self.tls is not None and (self.tls.cert_file is None) != (self.tls.key_file is None):
            issues.append(((*loc, "tls"), "give both cert_file and key_file, or neither"))
        if self._password is not None and self.username is None:
            issues.append(((*loc, "username"), "a password needs a username"))
        if self.reconnect_max_delay < self.reconnect_delay:
            issues.append(((*loc, "reconnect_max_delay"), "must not be below reconnect_delay"))
        seen: list[tuple[int, TopicPattern]] = []
        for i, subscription in enumerate(self.subscriptions):
            sub_loc: Loc = (*loc, "subscriptions", i)
            issues.extend(_check_subscription(subscription, config, sub_loc))
            pattern = subscription.pattern
            for j, other in seen:
                if pattern.overlaps(other):
                    issues.append(((*sub_loc, "topic"), f"overlaps subscriptions[{j}].topic: "
                                   "the broker would deliver a message to both"))
            seen.append((i, pattern))
        return issues


def _check_subscription(sub: Subscription, config: Config, loc: Loc) -> list[tuple[Loc, str]]:
    issues: list[tuple[Loc, str]] = []
    variables = sub.pattern.variables
    device = sub.device
    templates: list[tuple[Loc, str]] = [((*loc, "device", "id"), device.id)]
    if device.display_name is not None:
        templates.append(((*loc, "device", "display_name"), device.display_name))
    if device.group is not None:
        templates.append(((*loc, "device", "group"), device.group))
    templates += [((*loc, "device", "tags", k), tag) for k, tag in enumerate(device.tags)]
    templates += [((*loc, "device", "properties", key), value)
                  for key, value in device.properties.items()]
    templates += [((*loc, "dimensions", key), value) for key, value in sub.dimensions.items()]
    for j, mapping in enumerate(sub.metrics):
        templates += [((*loc, "metrics", j, "dimensions", key), value)
                      for key, value in mapping.dimensions.items()]
    for where, text in templates:
        unknown = [name for name in template_fields(text) if name not in variables]
        if unknown:
            hint = "; set device.id from names it has" if where[-2:] == ("device", "id") else ""
            issues.append((where, f"uses {{{unknown[0]}}}, which the topic pattern "
                                  f"{sub.topic!r} does not name{hint}"))
    if sub.payload != "json" and sub.timestamp is not None:
        issues.append(((*loc, "timestamp"), f"a {sub.payload} payload has no timestamp field; "
                       "the receive time is used"))
    for j, mapping in enumerate(sub.metrics):
        if sub.payload == "json" and mapping.field is None:
            issues.append(((*loc, "metrics", j, "field"), "a json payload needs the field "
                           "that holds the value"))
        if sub.payload != "json" and mapping.field is not None:
            issues.append(((*loc, "metrics", j, "field"), f"a {sub.payload} payload has no "
                           "fields; remove field"))
        keys = sorted({**sub.dimensions, **mapping.dimensions})
        problem = config.check_series(mapping.metric, keys, device.type)
        if problem is not None:
            issues.append(((*loc, "metrics", j, "metric"), problem))
    return issues
