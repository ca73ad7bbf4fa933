"""The domain types every layer shares: readings, devices, and the sink sources emit into.

Sources turn messages or polls into `Reading`s and hand them to a `Sink` (the buffer).
Nothing below the config layer sees raw dicts; these types are what flows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

Dimensions = tuple[tuple[str, str], ...]
"""Dimension key/value pairs of a series, sorted by key (see `dims`)."""


def dims(mapping: Mapping[str, str] | None = None) -> Dimensions:
    """The canonical (sorted) form of a dimension mapping, usable as part of a series key."""
    if not mapping:
        return ()
    return tuple(sorted(mapping.items()))


class Reading(NamedTuple):
    """One data point of one series of one custom device."""

    device: str
    metric: str
    dimensions: Dimensions
    timestamp_ms: int
    value: float


@dataclass(frozen=True, slots=True)
class Device:
    """A custom device and the metadata Dynatrace shows for it."""

    id: str
    type: str
    display_name: str | None = None
    group: str | None = None
    ip_addresses: tuple[str, ...] = ()
    host_names: tuple[str, ...] = ()
    listen_ports: tuple[int, ...] = ()
    tags: tuple[str, ...] = ()
    properties: Mapping[str, str] = field(default_factory=dict)
    config_url: str | None = None
    favicon: str | None = None


class Sink(Protocol):
    """Where sources put what they collect. `emit` is synchronous and never awaits."""

    def declare_device(self, device: Device) -> None:
        """Make a device known (or update its metadata) before emitting readings for it."""

    def emit(self, reading: Reading) -> None:
        """Accept one reading; invalid ones are counted and dropped, never raised."""
