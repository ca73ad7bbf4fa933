"""The `type: snmp` source config: targets (one custom device each), credentials, what to poll.

What to poll is written once per source (for every target) and may be added to per target:
built-in `profiles`, `scalars` (fetched with GET) and `tables` (columns walked with
GETBULK, one series per row). OIDs are numeric; no MIB is loaded at run time.

The text forms users write are parsed here, once: `host[:port]` (`parse_host`) and dotted
OIDs (`parse_oid`). Rules that need the source's defaults and the rest of the config (a
target's credentials and device type, metric dimensions) are in `SnmpSourceConfig.check`.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BeforeValidator, Field, PrivateAttr, SecretStr, model_validator

from collector.config.model import Config, Loc, MetricConfig, SourceConfig
from collector.config.sources import register_source_config
from collector.config.types import (
    DimensionKey,
    MetricId,
    PositiveDuration,
    Properties,
    StrictModel,
    pick_secret,
)
from collector.model import Device

DEFAULT_PORT = 161
INDEX = "index"
"""A dimension (or filter) value taken from the row index instead of a column."""

Version = Literal["v1", "v2c", "v3"]
EngineName = Literal["pysnmp", "gufo"]
"""The SNMP library that polls a target (docs/snmp.md, "Engines")."""
GUFO_INSTALLED = importlib.util.find_spec("gufo") is not None and (
    importlib.util.find_spec("gufo.snmp") is not None)
"""gufo_snmp has wheels for Linux x86_64 and aarch64 (and macOS arm64) only."""
Transform = Literal["gauge", "delta", "rate"]
AuthProtocol = Literal["none", "MD5", "SHA", "SHA-224", "SHA-256", "SHA-384", "SHA-512"]
PrivProtocol = Literal["none", "DES", "3DES", "AES", "AES-128", "AES-192", "AES-256", "AES-192C",
                       "AES-256C"]


def parse_oid(text: str) -> tuple[int, ...]:
    """`1.3.6.1.2.1.1.3.0` (a leading dot is allowed) -> (1, 3, 6, 1, 2, 1, 1, 3, 0)."""
    parts = text.strip().removeprefix(".").split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"{text!r} is not a numeric OID like 1.3.6.1.2.1.1.3.0")
    oid = tuple(int(p) for p in parts)
    if oid[0] > 2 or any(n >= 2**32 for n in oid):
        raise ValueError(f"{text!r} is not a valid OID")
    return oid


def parse_host(text: str) -> tuple[str, int]:
    """`host[:port]`: a name, an IPv4 address, or an IPv6 address (`[::1]:161` with a port)."""
    text = text.strip()
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: write an IPv6 address with a port as [addr]:port")
        if rest:
            port = _port(rest[1:], text)
        ipaddress.IPv6Address(host)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(port_text, text)
    elif ":" in text:
        ipaddress.IPv6Address(text)  # a bare IPv6 address, default port
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"{text!r} is not host[:port]")
    return host, port


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{whole!r}: the port must be 1-65535")
    return int(text)


def _oid(value: str) -> str:
    return ".".join(map(str, parse_oid(value)))


def _oid_or_index(value: str) -> str:
    return value if value == INDEX else _oid(value)


def _host(value: str) -> str:
    parse_host(value)
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{value!r} is not a regular expression: {exc}") from None
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value) or value == 0:
        raise ValueError("scale must be a finite number other than 0")
    return value


def _is_oid(text: str) -> bool:
    try:
        parse_oid(text)
    except ValueError:
        return False
    return True


def _upper(value: object) -> object:
    # `sha-256`, `aes` and `Aes-128` mean the same as `SHA-256`, `AES`, `AES-128`.
    return value.upper() if isinstance(value, str) and value.lower() != "none" else value


def _profile(value: str) -> str:
    from collector.sources.snmp.profiles import PROFILES

    if value not in PROFILES:
        raise ValueError(f"unknown profile {value!r}; built-in: {', '.join(sorted(PROFILES))}")
    return value


Oid = Annotated[str, AfterValidator(_oid)]
"""A numeric OID, kept in its dotted text form (normalised: no leading dot)."""
OidOrIndex = Annotated[str, AfterValidator(_oid_or_index)]
Regex = Annotated[str, AfterValidator(_regex)]
Scale = Annotated[float, AfterValidator(_finite)]
ProfileName = Annotated[str, AfterValidator(_profile)]


class SnmpV3Config(StrictModel):
    """A USM user. Keys are pass phrases (at least 8 characters), from text or a file."""

    user: str = Field(min_length=1, max_length=32)
    auth_protocol: Annotated[AuthProtocol, BeforeValidator(_upper)] = "none"
    auth_key: SecretStr | None = None
    auth_key_file: Path | None = None
    priv_protocol: Annotated[PrivProtocol, BeforeValidator(_upper)] = "none"
    priv_key: SecretStr | None = None
    priv_key_file: Path | None = None
    context: str = ""

    _auth_key: SecretStr | None = PrivateAttr(default=None)
    _priv_key: SecretStr | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _keys(self) -> SnmpV3Config:
        self._auth_key = pick_secret(self.auth_key, self.auth_key_file, "auth_key")
        self._priv_key = pick_secret(self.priv_key, self.priv_key_file, "priv_key")
        for what, protocol, key in (("auth", self.auth_protocol, self._auth_key),
                                    ("priv", self.priv_protocol, self._priv_key)):
            if protocol == "none" and key is not None:
                raise ValueError(f"{what}_key is set but {what}_protocol is none")
            if protocol != "none" and key is None:
                raise ValueError(f"{what}_protocol {protocol} needs {what}_key or "
                                 f"{what}_key_file")
            if key is not None and len(key.get_secret_value()) < 8:
                raise ValueError(f"{what}_key must be at least 8 characters (RFC 3414)")
        if self.priv_protocol != "none" and self.auth_protocol == "none":
            raise ValueError("privacy needs authentication: set auth_protocol")
        return self

    def auth_secret(self) -> SecretStr | None:
        return self._auth_key

    def priv_secret(self) -> SecretStr | None:
        return self._priv_key


class SnmpScalar(StrictModel):
    """One value fetched with GET: the OID includes its instance (usually `.0`)."""

    metric: MetricId
    oid: Oid
    transform: Transform = "gauge"
    scale: Scale = 1.0


class SnmpColumn(StrictModel):
    """One table column; every row that passes the filters becomes a series."""

    metric: MetricId
    oid: Oid
    transform: Transform = "gauge"
    scale: Scale = 1.0
    divide_by: Oid | None = None
    """Another column of the same row to divide by (e.g. used / size); gauge only."""

    @model_validator(mode="after")
    def _ratio(self) -> SnmpColumn:
        if self.divide_by is not None and self.transform != "gauge":
            raise ValueError("divide_by works with transform: gauge only")
        return self


class SnmpTable(StrictModel):
    """Columns that share a row index, walked together (they may span tables, e.g. ifTable
    and ifXTable, which are both indexed by ifIndex)."""

    name: str = ""
    dimensions: dict[DimensionKey, OidOrIndex] = {}
    """Dimension key -> the column OID its value comes from, or `index` for the row index."""
    include: dict[str, Regex] = {}
    """Keep only rows whose values fully match every regex (key: a dimension key or a column
    OID)."""
    exclude: dict[str, Regex] = {}
    """Drop rows whose value fully matches any of these regexes."""
    metrics: list[SnmpColumn] = Field(min_length=1)

    @model_validator(mode="after")
    def _filter_keys(self) -> SnmpTable:
        for key in (*self.include, *self.exclude):
            if key not in self.dimensions and key != INDEX and not _is_oid(key):
                raise ValueError(f"filter key {key!r} is neither a dimension of this table "
                                 "nor a column OID")
        return self

    def filter_column(self, key: str) -> str:
        """The column OID (or `index`) a filter key reads."""
        return self.dimensions.get(key) or (key if key == INDEX else _oid(key))


class SnmpProfileRef(StrictModel):
    """A built-in profile, optionally with row filters for its tables.

    A filter key that is a dimension applies to the profile's tables that have that
    dimension; a column OID applies to all of them.
    """

    name: ProfileName
    include: dict[str, Regex] = {}
    exclude: dict[str, Regex] = {}

    @model_validator(mode="after")
    def _filter_keys(self) -> SnmpProfileRef:
        from collector.sources.snmp.profiles import PROFILES

        known = {key for table in PROFILES[self.name].tables for key in table.dimensions}
        for key in (*self.include, *self.exclude):
            if key not in known and key != INDEX and not _is_oid(key):
                raise ValueError(f"filter key {key!r} is neither a dimension of profile "
                                 f"{self.name} ({', '.join(sorted(known))}) nor a column OID")
        return self

    def apply(self, table: SnmpTable) -> SnmpTable:
        """The profile's table with the filters that concern it added."""
        def concern(filters: dict[str, str]) -> dict[str, str]:
            return {k: v for k, v in filters.items() if k in table.dimensions or _is_oid(k)}

        include, exclude = concern(self.include), concern(self.exclude)
        if not include and not exclude:
            return table
        return table.model_copy(update={"include": {**table.include, **include},
                                        "exclude": {**table.exclude, **exclude}})


def _profile_ref(value: object) -> object:
    return {"name": value} if isinstance(value, str) else value


ProfileRef = Annotated[SnmpProfileRef, BeforeValidator(_profile_ref)]
"""A profile name, or {name, include, exclude}."""


class SnmpCredentials(StrictModel):
    """Credentials; a target's values override the source's (`version` is on each)."""

    community: SecretStr | None = None
    community_file: Path | None = None
    v3: SnmpV3Config | None = None

    _community: SecretStr | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _read_community(self) -> SnmpCredentials:
        self._community = pick_secret(self.community, self.community_file, "community")
        return self

    def community_secret(self) -> SecretStr | None:
        return self._community


class SnmpTarget(SnmpCredentials):
    """One agent, polled as one custom device."""

    host: Annotated[str, AfterValidator(_host)]
    version: Version | None = None
    device: str | None = Field(None, min_length=1, max_length=256)
    """The custom device id; the host when absent."""
    display_name: str | None = None
    type: str | None = Field(None, min_length=1)
    group: str | None = None
    host_names: list[str] = []
    ip_addresses: list[str] = []
    tags: list[str] = []
    properties: Properties = {}
    interval: PositiveDuration | None = None
    timeout: PositiveDuration | None = None
    retries: int | None = Field(None, ge=0, le=10)
    engine: EngineName | None = None
    profiles: list[ProfileRef] = []
    scalars: list[SnmpScalar] = []
    tables: list[SnmpTable] = []

    @property
    def device_id(self) -> str:
        return self.device or self.host

    @property
    def address(self) -> tuple[str, int]:
        return parse_host(self.host)


@register_source_config
class SnmpSourceConfig(SourceConfig, SnmpCredentials):
    TYPE: ClassVar[str] = "snmp"
    type: Literal["snmp"] = "snmp"
    version: Version = "v2c"
    interval: PositiveDuration = 60.0
    timeout: PositiveDuration = 5.0
    """Per request and try; a request takes at most timeout x (retries + 1)."""
    retries: int = Field(1, ge=0, le=10)
    engine: EngineName = "gufo" if GUFO_INSTALLED else "pysnmp"
    """gufo_snmp (Rust core, a tenth of pysnmp's CPU per value) where it is installed."""
    max_repetitions: int = Field(25, ge=1, le=1000)
    max_concurrency: int = Field(64, ge=1, le=10_000)
    """Polls of this source in flight at once (each has one request outstanding)."""
    device_type: str | None = Field(None, min_length=1)
    """Custom device type of targets that do not set `type`."""
    profiles: list[ProfileRef] = []
    scalars: list[SnmpScalar] = []
    tables: list[SnmpTable] = []
    targets: list[SnmpTarget] = Field(min_length=1)

    # -- what a target polls, with the source's defaults applied --------------------------

    def target_version(self, target: SnmpTarget) -> Version:
        return target.version or self.version

    def target_community(self, target: SnmpTarget) -> SecretStr | None:
        return target.community_secret() or self.community_secret()

    def target_v3(self, target: SnmpTarget) -> SnmpV3Config | None:
        return target.v3 or self.v3

    def target_engine(self, target: SnmpTarget) -> EngineName:
        return target.engine or self.engine

    def target_type(self, target: SnmpTarget) -> str | None:
        return target.type or self.device_type

    def target_profiles(self, target: SnmpTarget) -> list[SnmpProfileRef]:
        """The source's profiles and the target's; the target's filters win for a name."""
        return list({p.name: p for p in [*self.profiles, *target.profiles]}.values())

    def target_scalars(self, target: SnmpTarget) -> list[SnmpScalar]:
        from collector.sources.snmp.profiles import PROFILES

        profiled = [s for p in self.target_profiles(target) for s in PROFILES[p.name].scalars]
        return [*profiled, *self.scalars, *target.scalars]

    def target_tables(self, target: SnmpTarget) -> list[SnmpTable]:
        from collector.sources.snmp.profiles import PROFILES

        profiled = [p.apply(t) for p in self.target_profiles(target)
                    for t in PROFILES[p.name].tables]
        return [*profiled, *self.tables, *target.tables]

    def target_device(self, target: SnmpTarget) -> Device:
        host, _ = target.address
        try:
            ipaddress.ip_address(host)
            is_ip = True
        except ValueError:
            is_ip = False
        return Device(
            id=target.device_id,
            type=self.target_type(target) or "",
            display_name=target.display_name,
            group=target.group,
            ip_addresses=tuple(target.ip_addresses or ([host] if is_ip else [])),
            host_names=tuple(target.host_names or ([] if is_ip else [host])),
            tags=tuple(target.tags),
            properties=dict(target.properties),
        )

    # -- config-wide rules -------------------------------------------------------------------

    def metric_definitions(self) -> Mapping[str, MetricConfig]:
        """The metrics of the profiles in use, typed with the device types that report them."""
        from collector.sources.snmp.profiles import PROFILES

        types: dict[str, set[str]] = {}
        for target in self.targets:
            device_type = self.target_type(target)
            for profile in self.target_profiles(target):
                types.setdefault(profile.name, set()).update([device_type] if device_type else [])
        definitions: dict[str, MetricConfig] = {}
        for name, device_types in types.items():
            for metric_id, metric in PROFILES[name].metrics.items():
                definitions[metric_id] = MetricConfig(
                    display_name=metric.display_name, unit=metric.unit,
                    dimensions=list(metric.dimensions), types=sorted(device_types) or ["-"])
        return definitions

    def check(self, config: Config, loc: Loc) -> list[tuple[Loc, str]]:
        issues: dict[tuple[Loc, str], None] = {}  # ordered, and one line per (path, problem)
        seen: dict[str, int] = {}
        checked: dict[tuple[str, tuple[str, ...], str | None], str | None] = {}
        for j, target in enumerate(self.targets):
            tloc: Loc = (*loc, "targets", j)
            for where, problem in self._target_issues(config, target):
                issues[((*tloc, *where), problem)] = None
            for where, problem in self._engine_issues(target, loc, tloc):
                issues[(where, problem)] = None
            if target.device_id in seen:
                issues[((*tloc, "device"), f"device {target.device_id!r} is also polled by "
                        f"targets[{seen[target.device_id]}]")] = None
            seen.setdefault(target.device_id, j)
            if target.device_id in config.devices:
                issues[((*tloc, "device"), f"device {target.device_id!r} is also defined under "
                        "devices:; an SNMP target carries its own device metadata")] = None
            device_type = self.target_type(target)
            for where, metric_id, keys in self._series(target, tloc, loc):
                # Source-level entries repeat for every target: check each kind once.
                kind = (metric_id, tuple(keys), device_type)
                if kind not in checked:
                    checked[kind] = config.check_series(metric_id, keys, device_type)
                why = checked[kind]
                if why:
                    issues[(where, why)] = None
        return list(issues)

    def _target_issues(self, config: Config, target: SnmpTarget) -> list[tuple[Loc, str]]:
        issues: list[tuple[Loc, str]] = []
        version = self.target_version(target)
        if version in ("v1", "v2c") and self.target_community(target) is None:
            issues.append(((), f"SNMP {version} needs a community (here or on the source)"))
        if version == "v3" and self.target_v3(target) is None:
            issues.append(((), "SNMP v3 needs a v3: user (here or on the source)"))
        if self.target_type(target) is None:
            issues.append(((), "the device needs a type: set type here or device_type on "
                               "the source"))
        return issues

    def _engine_issues(self, target: SnmpTarget, loc: Loc, tloc: Loc) -> list[tuple[Loc, str]]:
        """What the target's engine cannot do: gufo_snmp 0.13 lacks 3DES and v3 contexts."""
        if self.target_engine(target) != "gufo":
            return []
        # Said where it is written: once for the source's, per target for the target's own.
        if not GUFO_INSTALLED:
            return [((*(tloc if target.engine else loc), "engine"),
                     "engine gufo needs the gufo_snmp package, which is not installed (it has "
                     "no build for this machine): set engine: pysnmp")]
        v3 = self.target_v3(target)
        if self.target_version(target) != "v3" or v3 is None:
            return []
        where: Loc = (*(tloc if target.v3 is not None else loc), "v3")
        fix = "set engine: pysnmp (on the target or the source)"
        issues: list[tuple[Loc, str]] = []
        if v3.priv_protocol == "3DES":
            issues.append(((*where, "priv_protocol"), f"engine gufo has no 3DES privacy: {fix}"))
        if v3.context:
            issues.append(((*where, "context"),
                           f"engine gufo cannot send an SNMPv3 context name: {fix}"))
        return issues

    def _series(self, target: SnmpTarget, tloc: Loc,
                loc: Loc) -> list[tuple[Loc, str, list[str]]]:
        """(path, metric id, dimension keys) of every series kind this target reports."""
        from collector.sources.snmp.profiles import PROFILES

        series: list[tuple[Loc, str, list[str]]] = []
        for owner, oloc in ((self, loc), (target, tloc)):
            for k, profile in enumerate(owner.profiles):
                for metric_id, metric in PROFILES[profile.name].metrics.items():
                    series.append(((*oloc, "profiles", k), metric_id, list(metric.dimensions)))
            for k, scalar in enumerate(owner.scalars):
                series.append(((*oloc, "scalars", k, "metric"), scalar.metric, []))
            for k, table in enumerate(owner.tables):
                for m, column in enumerate(table.metrics):
                    series.append(((*oloc, "tables", k, "metrics", m, "metric"),
                                   column.metric, list(table.dimensions)))
        return series
