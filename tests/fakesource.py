"""A test-only source: emits a counter for one device on a timer (or on demand).

Registered as `type: fake` when imported, so tests (and tests/fake_collector.py for
subprocess runs) can drive the whole pipeline without a real protocol.
"""

from __future__ import annotations

import asyncio
import sys
from typing import ClassVar, Literal

from collector.config.model import Config, Loc, SourceConfig
from collector.config.sources import register_source_config
from collector.model import Device, Reading, dims
from collector.sources import SourceContext, register_source


class FakeSourceConfig(SourceConfig):
    TYPE: ClassVar[str] = "fake"
    type: Literal["fake"] = "fake"
    device: str
    device_type: str
    metric: str
    dimensions: dict[str, str] = {}
    interval: float = 0.05
    count: int = 0  # 0 = forever
    start_value: float = 0.0

    def check(self, config: Config, loc: Loc) -> list[tuple[Loc, str]]:
        device_type = self.device_type
        problem = config.check_series(self.metric, list(self.dimensions), device_type)
        return [((*loc, "metric"), problem)] if problem else []


class FakeSource:
    def __init__(self, config: FakeSourceConfig, ctx: SourceContext) -> None:
        self.name = config.name
        self.config = config
        self.ctx = ctx
        self.emitted: list[Reading] = []

    async def run(self) -> None:
        c = self.config
        self.ctx.sink.declare_device(Device(c.device, c.device_type))
        value = c.start_value
        n = 0
        while c.count == 0 or n < c.count:
            reading = Reading(c.device, c.metric, dims(c.dimensions),
                              int(self.ctx.clock() * 1000), value)
            self.ctx.sink.emit(reading)
            self.emitted.append(reading)
            value += 1
            n += 1
            print(f"emitted {n}", file=sys.stderr, flush=True)
            await asyncio.sleep(c.interval)
        await asyncio.Event().wait()


def _factory(config: SourceConfig, ctx: SourceContext) -> FakeSource:
    assert isinstance(config, FakeSourceConfig)
    return FakeSource(config, ctx)


register_source_config(FakeSourceConfig)
register_source(FakeSourceConfig, _factory)
