"""What the buffer checks readings against: registered metrics and declared devices.

A series (device, metric, dimensions) is checked once, when it first appears, and again
only after the catalog changes (a reload, a device's type change, a metric disabled).
"""

from __future__ import annotations

from dataclasses import dataclass

from collector.model import Device, Dimensions


@dataclass(frozen=True)
class MetricInfo:
    id: str
    dimensions: frozenset[str]
    types: frozenset[str]
    not_before_ms: int = 0
    """Points before this are rejected by Dynatrace (the metric's creation time)."""
    enabled: bool = True
    why_disabled: str = ""


class Catalog:
    def __init__(self) -> None:
        self.metrics: dict[str, MetricInfo] = {}
        self.devices: dict[str, Device] = {}
        self.device_versions: dict[str, int] = {}
        self.configured: set[str] = set()
        """Devices under `devices:` in the config: their metadata wins over a source's."""
        self.generation = 0

    def set_metric(self, metric: MetricInfo) -> None:
        if self.metrics.get(metric.id) != metric:
            self.metrics[metric.id] = metric
            self.generation += 1

    def remove_metric(self, metric_id: str) -> None:
        if self.metrics.pop(metric_id, None) is not None:
            self.generation += 1

    def declare_device(self, device: Device, *, configured: bool = False) -> None:
        if configured:
            self.configured.add(device.id)
        elif device.id in self.configured:
            return  # the config describes this device; a source's view does not replace it
        old = self.devices.get(device.id)
        if old == device:
            return
        self.devices[device.id] = device
        self.device_versions[device.id] = self.device_versions.get(device.id, 0) + 1
        if old is None or old.type != device.type:
            self.generation += 1

    def remove_device(self, device_id: str) -> None:
        self.configured.discard(device_id)
        if self.devices.pop(device_id, None) is not None:
            self.generation += 1

    def series_problem(self, device_id: str, metric_id: str, dimensions: Dimensions) -> str | None:
        """Why this series may not be sent (a short cause), or None if it may."""
        metric = self.metrics.get(metric_id)
        if metric is None:
            return "unknown metric"
        if not metric.enabled:
            return "metric disabled"
        device = self.devices.get(device_id)
        if device is None:
            return "unknown device"
        if device.type not in metric.types:
            return "device type not in metric types"
        for key, value in dimensions:
            if key not in metric.dimensions:
                return "undeclared dimension"
            if not isinstance(value, str) or not 0 < len(value) <= 128:
                return "dimension value empty or too long"
        return None
