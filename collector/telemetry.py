"""The collector's own counters and gauges, with Prometheus text rendering.

Every layer counts into one `Telemetry` registry; the health endpoint renders it and
self-monitoring reads it. Counters are plain attribute increments on the hot path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


class Counter:
    """One monotonically increasing value (one label combination of a family)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class Gauge(Counter):
    """A value that goes up and down, or is read from a callback at render time."""

    __slots__ = ("callback",)

    def __init__(self) -> None:
        super().__init__()
        self.callback: Callable[[], float] | None = None

    def set(self, value: float) -> None:
        self.value = value

    def read(self) -> float:
        return self.callback() if self.callback is not None else self.value


@dataclass
class Family:
    """A named metric with a fixed set of label names, one child per label values."""

    name: str
    help: str
    kind: str  # "counter" or "gauge"
    label_names: tuple[str, ...]
    children: dict[tuple[str, ...], Counter] = field(default_factory=dict)
    collect: Callable[[], dict[tuple[str, ...], float]] | None = None
    """Reads the values at render time instead of keeping children (for state owned elsewhere)."""

    def labels(self, *values: str) -> Counter:
        if len(values) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {values}")
        child = self.children.get(values)
        if child is None:
            child = Gauge() if self.kind == "gauge" else Counter()
            self.children[values] = child
        return child

    def gauge(self, *values: str) -> Gauge:
        child = self.labels(*values)
        assert isinstance(child, Gauge)
        return child

    def inc(self, amount: float = 1.0) -> None:
        self.labels().inc(amount)

    def total(self) -> float:
        return sum(self.by_label().values())

    def value(self, *values: str) -> float:
        return self.by_label().get(values, 0.0)

    def by_label(self) -> dict[tuple[str, ...], float]:
        if self.collect is not None:
            return self.collect()
        return {k: _read(c) for k, c in self.children.items()}


def _read(child: Counter) -> float:
    return child.read() if isinstance(child, Gauge) else child.value


class Telemetry:
    """The registry. `counter`/`gauge` return the same family when asked twice."""

    def __init__(self, prefix: str = "dtcollector_") -> None:
        self.prefix = prefix
        self.families: dict[str, Family] = {}

    def counter(self, name: str, help: str, labels: tuple[str, ...] = ()) -> Family:
        return self._family(name, help, "counter", labels)

    def observe(
        self,
        name: str,
        help: str,
        kind: str,
        collect: Callable[[], dict[tuple[str, ...], float]],
        labels: tuple[str, ...] = (),
    ) -> Family:
        """A family whose values are read from `collect` at render time."""
        family = self._family(name, help, kind, labels)
        family.collect = collect
        return family

    def gauge(self, name: str, help: str, labels: tuple[str, ...] = ()) -> Family:
        return self._family(name, help, "gauge", labels)

    def _family(self, name: str, help: str, kind: str, labels: tuple[str, ...]) -> Family:
        family = self.families.get(name)
        if family is None:
            family = Family(name, help, kind, labels)
            self.families[name] = family
        elif family.kind != kind or family.label_names != labels:
            raise ValueError(f"telemetry {name} registered twice with different shapes")
        return family

    def render_prometheus(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        return "".join(self._render_lines())

    def _render_lines(self) -> Iterator[str]:
        for family in self.families.values():
            full = self.prefix + family.name
            if family.kind == "counter":
                full += "_total"
            yield f"# HELP {full} {_escape_help(family.help)}\n"
            yield f"# TYPE {full} {family.kind}\n"
            for values, number in family.by_label().items():
                label_text = ",".join(
                    f'{n}="{_escape_label(v)}"'
                    for n, v in zip(family.label_names, values, strict=True)
                )
                suffix = "{" + label_text + "}" if label_text else ""
                yield f"{full}{suffix} {_number(number)}\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value == int(value) else repr(value)
