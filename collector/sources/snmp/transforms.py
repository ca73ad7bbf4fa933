"""From what an agent reports to what a Dynatrace chart should show.

Dynatrace custom metrics are gauges per data point, so a counter is sent as a `delta` (its
increase since the previous poll) or a `rate` (that increase per second of the agent's own
clock, sysUpTime, when it has one). Counter32/Counter64 wrap-around is undone; a restart of
the agent (sysUpTime went back) or a drop no wrap explains starts the series afresh instead
of sending a spike; the first sample of a series only sets its baseline.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Literal, NamedTuple

from collector.sources.snmp.engine import Kind, Varbind

Number = int | float
TICKS_WRAP = 2**32
UNKNOWN_WIDTH = 0
"""The counter width of a `Kind.NUMBER`: 32 bits while its values fit, else 64."""
_BITS = {Kind.COUNTER32: 32, Kind.COUNTER64: 64, Kind.TIMETICKS: 32, Kind.NUMBER: UNKNOWN_WIDTH}
_NUMERIC = {Kind.INTEGER, Kind.COUNTER32, Kind.COUNTER64, Kind.GAUGE32, Kind.TIMETICKS,
            Kind.NUMBER}
_MISSING = {Kind.NO_SUCH_OBJECT: "no_such_object", Kind.NO_SUCH_INSTANCE: "no_such_instance",
            Kind.END_OF_MIB_VIEW: "end_of_mib_view"}
MAX_DIMENSION_VALUE = 128


def read_number(varbind: Varbind) -> tuple[Number | None, str | None]:
    """The value as a number, or None and the reason it is not one (counted by reason)."""
    if varbind.kind in _NUMERIC and isinstance(varbind.value, int):
        return varbind.value, None
    if varbind.kind in _MISSING:
        return None, _MISSING[varbind.kind]
    if varbind.kind is Kind.OCTETS and isinstance(varbind.value, bytes):
        # Some agents report numbers as text ("42.5"); anything else is not a number.
        text = varbind.value.decode("ascii", "replace").strip().strip("\x00")
        try:
            return int(text), None
        except ValueError:
            pass
        try:
            value = float(text)
        except ValueError:
            return None, "not_a_number"
        return (value, None) if math.isfinite(value) else (None, "not_a_number")
    return None, "not_a_number"


def read_text(varbind: Varbind) -> str | None:
    """The value as a dimension value; None when there is none."""
    if varbind.kind in _NUMERIC:
        return str(varbind.value)
    if varbind.kind is not Kind.OCTETS or not isinstance(varbind.value, bytes):
        return None
    text = varbind.value.decode("utf-8", "replace").strip("\x00").strip()
    if not text.isprintable():  # binary, e.g. a MAC address: show it as hex
        text = ":".join(f"{b:02x}" for b in varbind.value)
    return text[:MAX_DIMENSION_VALUE] or None


def counter_bits(kind: Kind) -> int | None:
    """How many bits a counter of this kind wraps at; None for kinds that never wrap."""
    return _BITS.get(kind)


def counter_increase(previous: Number, current: Number, bits: int | None) -> Number | None:
    """How much a counter grew; None when it went back by more than a wrap explains."""
    if current >= previous:
        return current - previous
    if bits is None:
        return None
    if bits == UNKNOWN_WIDTH:
        bits = 32 if previous < 2**32 else 64
    wrapped = current + 2**bits - previous
    # A wrap leaves a small increase; a reset leaves an implausibly large one.
    return wrapped if wrapped < 2 ** (bits - 1) else None


class AgentClock:
    """Seconds on an agent's clock from sysUpTime, its 32-bit tick wrap undone.

    `epoch` changes when the agent restarted (sysUpTime went back by more than a wrap
    explains) or the clock basis changed; counters from different epochs are not compared.
    Without sysUpTime the collector's monotonic clock is used.
    """

    def __init__(self) -> None:
        self.epoch = 0
        self._ticks: int | None = None
        self._local = 0.0
        self._offset = 0.0
        self._started = False

    def update(self, ticks: int | None, local: float) -> tuple[float, int]:
        """Read the clock at local monotonic time `local`: (seconds, epoch)."""
        if self._started and (ticks is None) != (self._ticks is None):
            self.epoch += 1
            self._offset = 0.0
        elif ticks is not None and self._ticks is not None and ticks < self._ticks:
            wrapped = (ticks + TICKS_WRAP - self._ticks) / 100
            if wrapped <= (local - self._local) * 1.5 + 5:
                self._offset += TICKS_WRAP / 100
            else:
                self.epoch += 1
                self._offset = 0.0
        self._started = True
        self._ticks, self._local = ticks, local
        return (local if ticks is None else ticks / 100 + self._offset), self.epoch


class Sample(NamedTuple):
    value: Number
    at: float
    epoch: int


class CounterState:
    """The previous sample of every delta/rate series of one target."""

    def __init__(self) -> None:
        self._previous: dict[Hashable, Sample] = {}
        self._seen: set[Hashable] = set()
        self.resets = 0
        """Samples skipped because the counter was reset (restart or implausible drop)."""

    def apply(self, key: Hashable, transform: Literal["gauge", "delta", "rate"],
              value: Number, *, bits: int | None, at: float, epoch: int,
              scale: float = 1.0) -> float | None:
        """The value to send for this sample, or None (a first sample, or after a reset)."""
        if transform == "gauge":
            return value * scale
        current = Sample(value, at, epoch)
        previous = self._previous.get(key)
        self._previous[key] = current
        self._seen.add(key)
        if previous is None:
            return None
        increase = (counter_increase(previous.value, value, bits)
                    if previous.epoch == epoch else None)
        if increase is None:
            self.resets += 1
            return None
        if transform == "delta":
            return increase * scale
        seconds = at - previous.at
        return increase / seconds * scale if seconds > 0 else None

    def forget_unseen(self) -> None:
        """Drop series not seen since the last call (removed interfaces, filtered rows)."""
        self._previous = {k: v for k, v in self._previous.items() if k in self._seen}
        self._seen = set()
