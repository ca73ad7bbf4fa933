"""The config models: the public contract of config/collector.example.yaml.

Field rules live on the fields (so pydantic reports all of them at once, with paths);
rules that relate sections to each other live in `Config.semantic_issues`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from collector.config.types import (
    DimensionKey,
    Duration,
    MetricId,
    PositiveDuration,
    Properties,
    StrictModel,
    pick_secret,
    shown_url,
)
from collector.model import Device

Loc = tuple[str | int, ...]
"""A path into the config, as pydantic reports it: ("metrics", "custom:x", "unit")."""

WINDOW_SECONDS = 3600.0
"""How far back the custom device endpoint accepts data points."""


def check_http_url(value: str, what: str = "URL") -> str:
    parts = urlsplit(value)
    shown = shown_url(value)  # never the credentials a URL may carry
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} {shown!r} must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise ValueError(f"{what} {shown!r} must not have a query or fragment")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"{what} {shown!r} has an invalid port") from None
    return value


class DynatraceConfig(StrictModel):
    url: str
    token: SecretStr | None = None
    token_file: Path | None = None
    verify_tls: bool = True
    ca_file: Path | None = None
    timeout: PositiveDuration = 10.0
    max_concurrency: int = Field(8, ge=1, le=256)
    max_request_bytes: int = Field(15360, ge=1024, le=1_000_000)

    _token: SecretStr | None = PrivateAttr(default=None)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        url = check_http_url(value.rstrip("/"), "dynatrace.url")
        parts = urlsplit(url)
        if parts.username is not None or parts.password is not None:
            # It would be logged with the URL; the token goes in a header anyway.
            raise ValueError("put the token in dynatrace.token or token_file, not in the url")
        return url

    @model_validator(mode="after")
    def _read_token(self) -> DynatraceConfig:
        self._token = pick_secret(self.token, self.token_file, "token")
        return self

    def api_token(self) -> SecretStr | None:
        """The token from `token`, `token_file` or the DT_API_TOKEN environment variable."""
        if self._token is not None:
            return self._token
        env = os.environ.get("DT_API_TOKEN", "").strip()
        return SecretStr(env) if env else None


class SpoolConfig(StrictModel):
    path: Path
    sync_interval: PositiveDuration = 1.0


class BufferConfig(StrictModel):
    flush_interval: PositiveDuration = 60.0
    flush_jitter: Duration = 0.0
    max_age: PositiveDuration = WINDOW_SECONDS
    max_points: int = Field(1_000_000, ge=1)
    max_clock_skew: Duration = 60.0
    shutdown_timeout: PositiveDuration = 10.0
    spool: SpoolConfig | None = None

    @field_validator("spool", mode="before")
    @classmethod
    def _spool_shorthand(cls, value: object) -> object:
        return {"path": value} if isinstance(value, str) else value

    @field_validator("max_age")
    @classmethod
    def _max_age(cls, value: float) -> float:
        if value > WINDOW_SECONDS:
            raise ValueError("max_age may be at most 1h: Dynatrace rejects older data points")
        return value

    @model_validator(mode="after")
    def _jitter(self) -> BufferConfig:
        if self.flush_jitter >= self.flush_interval:
            raise ValueError("flush_jitter must be shorter than flush_interval")
        return self


class MetricConfig(StrictModel):
    display_name: str = Field(min_length=1)
    unit: str = "Count"
    dimensions: list[DimensionKey] = []
    types: list[str] = Field(min_length=1)

    @field_validator("dimensions")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("dimension keys must be unique")
        return value


class DeviceConfig(StrictModel):
    display_name: str | None = None
    type: str = Field(min_length=1)
    group: str | None = None
    ip_addresses: list[str] = []
    host_names: list[str] = []
    listen_ports: list[int] = []
    tags: list[str] = []
    properties: Properties = {}
    config_url: str | None = None
    favicon: str | None = None

    @field_validator("listen_ports")
    @classmethod
    def _ports(cls, value: list[int]) -> list[int]:
        bad = [p for p in value if not 0 < p < 65536]
        if bad:
            raise ValueError(f"ports must be 1-65535, not {bad}")
        return value

    @field_validator("config_url", "favicon")
    @classmethod
    def _urls(cls, value: str | None) -> str | None:
        return None if value is None else check_http_url(value)

    def to_device(self, device_id: str) -> Device:
        return Device(
            id=device_id,
            type=self.type,
            display_name=self.display_name,
            group=self.group,
            ip_addresses=tuple(self.ip_addresses),
            host_names=tuple(self.host_names),
            listen_ports=tuple(self.listen_ports),
            tags=tuple(self.tags),
            properties=dict(self.properties),
            config_url=self.config_url,
            favicon=self.favicon,
        )


class SourceConfig(StrictModel):
    """Base of every source's config. A subclass sets `TYPE` and adds its own fields.

    `type:` in YAML selects the subclass (see collector.config.sources).
    """

    TYPE: ClassVar[str] = ""
    type: str
    name: str = ""

    def metric_definitions(self) -> Mapping[str, MetricConfig]:
        """Metrics this source brings with it (e.g. SNMP profiles); registered like others."""
        return {}

    def check(self, config: Config, loc: Loc) -> list[tuple[Loc, str]]:
        """Cross-section rules (metric dimensions, device types); (path, message) pairs."""
        return []


class HealthConfig(StrictModel):
    listen: str = "127.0.0.1:9464"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        from collector.health import parse_listen

        parse_listen(value)
        return value.strip()


class SelfMonitoringConfig(StrictModel):
    enabled: bool = False
    device_id: str = Field(default_factory=lambda: f"dt-collector-{socket.gethostname()}")
    display_name: str | None = None
    group: str = "dt-collector"
    interval: PositiveDuration = 60.0

    def metric_definitions(self) -> dict[str, MetricConfig]:
        from collector.sources.selfmon import SELF_METRICS

        return dict(SELF_METRICS) if self.enabled else {}


class LogConfig(StrictModel):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Config(StrictModel):
    dynatrace: DynatraceConfig
    buffer: BufferConfig = BufferConfig()
    metrics: dict[MetricId, MetricConfig] = {}
    devices: dict[str, DeviceConfig] = {}
    sources: list[SourceConfig] = []
    health: HealthConfig = HealthConfig()
    self_monitoring: SelfMonitoringConfig = SelfMonitoringConfig()
    log: LogConfig = LogConfig()

    @field_validator("devices")
    @classmethod
    def _device_ids(cls, value: dict[str, DeviceConfig]) -> dict[str, DeviceConfig]:
        for device_id in value:
            if not device_id.strip() or len(device_id) > 256 or not device_id.isprintable():
                raise ValueError(f"device id {device_id!r} must be 1-256 printable characters")
        return value

    def all_metrics(self) -> dict[str, MetricConfig]:
        """Configured metrics plus those sources bring (configured ones win)."""
        merged: dict[str, MetricConfig] = self.self_monitoring.metric_definitions()
        for source in self.sources:
            for metric_id, metric in source.metric_definitions().items():
                known = merged.get(metric_id)
                # e.g. two sources using one profile for devices of other types
                merged[metric_id] = metric if known is None else known.model_copy(
                    update={"types": list(dict.fromkeys([*known.types, *metric.types]))})
        merged.update(self.metrics)
        return merged

    def semantic_issues(self) -> list[tuple[Loc, str]]:
        """Rules that relate sections: checked after every field is valid."""
        issues: list[tuple[Loc, str]] = []
        names: dict[str, int] = {}
        for i, source in enumerate(self.sources):
            if source.name in names:
                issues.append(
                    (("sources", i, "name"), f"source name {source.name!r} is used twice")
                )
            names[source.name] = i
            issues.extend(source.check(self, ("sources", i)))
        return issues

    def check_series(
        self, metric_id: str, dimension_keys: list[str], device_type: str | None
    ) -> str | None:
        """Why a source may not report this series, or None if it may (for `check`)."""
        metric = self.all_metrics().get(metric_id)
        if metric is None:
            return f"metric {metric_id!r} is not defined under metrics:"
        undeclared = sorted(set(dimension_keys) - set(metric.dimensions))
        if undeclared:
            return f"metric {metric_id!r} does not declare dimension(s) {undeclared}"
        if device_type is not None and device_type not in metric.types:
            return (
                f"device type {device_type!r} is not in the types {metric.types} "
                f"of metric {metric_id!r}"
            )
        return None


def dump_public(config: Config) -> dict[str, Any]:
    """The config as plain data with secrets masked (for logs and --dry-run)."""
    return config.model_dump(mode="json")
