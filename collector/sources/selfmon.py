"""Self-monitoring: the collector reports its own counters as a custom device of its own.

So its health shows where its users already look. Counters are sent as the change since
the previous report (Dynatrace custom metrics are gauges per data point).
"""

from __future__ import annotations

import asyncio
import socket

from collector import __version__
from collector.config.model import MetricConfig, SelfMonitoringConfig
from collector.model import Device, Reading
from collector.sources import SourceContext

DEVICE_TYPE = "dt-collector"


def _metric(name: str, unit: str = "Count", dimensions: tuple[str, ...] = ()) -> MetricConfig:
    return MetricConfig(display_name=f"dt-collector {name}", unit=unit,
                        dimensions=list(dimensions), types=[DEVICE_TYPE])


SELF_METRICS: dict[str, MetricConfig] = {
    "custom:dtcollector.points.received": _metric("points received"),
    "custom:dtcollector.points.delivered": _metric("points delivered"),
    "custom:dtcollector.points.dropped": _metric("points dropped", dimensions=("reason",)),
    "custom:dtcollector.points.buffered": _metric("points buffered"),
    "custom:dtcollector.requests": _metric("requests to Dynatrace", dimensions=("status",)),
}
# telemetry family -> (metric, dimension key or None, is a counter)
_FROM_TELEMETRY = {
    "points_received": ("custom:dtcollector.points.received", None, True),
    "points_delivered": ("custom:dtcollector.points.delivered", None, True),
    "points_dropped": ("custom:dtcollector.points.dropped", "reason", True),
    "points_buffered": ("custom:dtcollector.points.buffered", None, False),
    "dynatrace_requests": ("custom:dtcollector.requests", "status", True),
}


class SelfMonitor:
    """A source whose protocol is the collector's own telemetry."""

    def __init__(self, config: SelfMonitoringConfig, ctx: SourceContext) -> None:
        self.name = "self-monitoring"
        self.config = config
        self.ctx = ctx
        self._last: dict[tuple[str, tuple[str, ...]], float] = {}

    def device(self) -> Device:
        host = socket.gethostname()
        return Device(self.config.device_id, DEVICE_TYPE,
                      display_name=self.config.display_name or f"dt-collector on {host}",
                      group=self.config.group, host_names=(host,),
                      properties={"version": __version__})

    def report(self) -> int:
        """Emit one reading per series; returns how many."""
        now_ms = int(self.ctx.clock() * 1000)
        emitted = 0
        for family_name, (metric, dim_key, counter) in _FROM_TELEMETRY.items():
            family = self.ctx.telemetry.families.get(family_name)
            if family is None:
                continue
            for labels, value in family.by_label().items():
                dim_values = labels
                if family_name == "dynatrace_requests":  # (endpoint, status): pushes only
                    if labels[0] != "push":
                        continue
                    dim_values = labels[1:]
                key = (family_name, dim_values)
                reported = value
                if counter:
                    reported = value - self._last.get(key, 0.0)
                    self._last[key] = value
                dims = ((dim_key, dim_values[0]),) if dim_key and dim_values else ()
                self.ctx.sink.emit(Reading(self.config.device_id, metric, dims, now_ms,
                                           reported))
                emitted += 1
        return emitted

    async def run(self) -> None:
        self.ctx.sink.declare_device(self.device())
        while True:
            await asyncio.sleep(self.config.interval)
            self.report()
