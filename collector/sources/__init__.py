"""Sources: each turns its protocol's messages or polls into readings for the buffer.

A source knows its protocol and nothing else. It gets a `SourceContext` (the sink to
emit into, the telemetry registry, a logger) and runs until cancelled. Scheduling,
counting and error policy helpers are shared, in this package.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from collector.config.model import SourceConfig
from collector.logs import Logger, get_logger
from collector.model import Device, Reading, Sink
from collector.telemetry import Telemetry

# Modules that register the built-in source types when imported.
BUILTIN_SOURCE_MODULES = ("collector.sources.mqtt", "collector.sources.snmp")


@dataclass
class SourceContext:
    sink: Sink
    telemetry: Telemetry
    log: Logger = field(default_factory=lambda: get_logger("collector.sources"))
    clock: Callable[[], float] = time.time
    """Wall clock in seconds; readings are stamped with int(clock() * 1000)."""


class CountedSink:
    """A sink that counts what one source hands over (readings_received{source})."""

    __slots__ = ("_counter", "_sink", "declare_device")

    def __init__(self, sink: Sink, telemetry: Telemetry, source: str) -> None:
        self._sink = sink
        self._counter = telemetry.counter(
            "readings_received", "Readings sources handed to the buffer, by source", ("source",)
        ).labels(source)
        self.declare_device: Callable[[Device], None] = sink.declare_device

    def emit(self, reading: Reading) -> None:
        self._counter.value += 1
        self._sink.emit(reading)


class Source(Protocol):
    """A running input. `run` returns only when cancelled; it never raises on bad input."""

    name: str

    async def run(self) -> None: ...


SourceFactory = Callable[[SourceConfig, SourceContext], Source]
_FACTORIES: dict[type[SourceConfig], SourceFactory] = {}


def register_source(config_type: type[SourceConfig], factory: SourceFactory) -> None:
    """Make `create_source` build `factory(config, ctx)` for configs of `config_type`."""
    _FACTORIES[config_type] = factory


def load_builtin_sources() -> None:
    for module in BUILTIN_SOURCE_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def create_source(config: SourceConfig, ctx: SourceContext) -> Source:
    load_builtin_sources()
    factory = _FACTORIES.get(type(config))
    if factory is None:
        raise LookupError(f"no source implementation registered for type {config.type!r}")
    return factory(config, ctx)
