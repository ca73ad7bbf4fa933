"""The buffer: data points per device, per series, compact, bounded and age-aware.

Each series keeps its points in two typed arrays (int64 timestamps, float64 values), so a
buffered point costs about 20 bytes, not a Python object. An arrival log (one uint32
series index per point) tells which point is oldest when the buffer is full.

Points leave the buffer in exactly one of these ways, each counted:
delivered, or dropped as `expired` (older than max_age), `overflow` (buffer full),
`rejected` (Dynatrace answered 400) or `invalid` (the reading broke a rule).
So at any time: received = delivered + dropped + buffered + in flight.

The flush `take`s a device's points (they are then in flight) and settles each piece:
`accept` (delivered), `reject` (dropped) or `keep` (back into the buffer for a retry).
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from collector.catalog import Catalog
from collector.logs import ThrottledLog, get_logger
from collector.model import Device, Dimensions, Reading

if TYPE_CHECKING:
    from collector.spool import Spool

DropReason = Literal["expired", "overflow", "rejected", "invalid"]
DROP_REASONS: tuple[DropReason, ...] = ("expired", "overflow", "rejected", "invalid")

log = get_logger("collector.buffer")


class Series:
    """The buffered points of one (device, metric, dimensions); live points are [head:]."""

    __slots__ = ("device", "dimensions", "generation", "head", "index", "journaled", "key",
                 "log_pending", "metric", "not_before_ms", "timestamps", "unjournaled",
                 "values")

    def __init__(self, index: int, device: str, metric: str, dimensions: Dimensions) -> None:
        self.index = index
        self.device = device
        self.metric = metric
        self.dimensions = dimensions
        self.key = (device, metric, dimensions)
        self.timestamps = array("q")
        self.values = array("d")
        self.head = 0
        self.log_pending = 0  # arrival-log entries of this series not yet consumed
        self.generation = -1  # catalog generation this series was last checked at
        self.not_before_ms = 0
        self.journaled = 0  # points [:journaled] are in the spool's journal (or gone)
        self.unjournaled = False  # points were added since the series last went to it

    def __len__(self) -> int:
        return len(self.timestamps) - self.head

    def take_all(self) -> tuple[array[int], array[float]]:
        if self.head == 0:
            ts, vs = self.timestamps, self.values
        else:
            ts, vs = self.timestamps[self.head :], self.values[self.head :]
        self.timestamps, self.values, self.head, self.journaled = array("q"), array("d"), 0, 0
        return ts, vs

    def put_back(self, ts: array[int], vs: array[float]) -> None:
        """Points taken earlier (so journaled) go back before those buffered since."""
        self.journaled = len(ts) + max(0, self.journaled - self.head)
        self.timestamps = ts + self.timestamps[self.head :]
        self.values = vs + self.values[self.head :]
        self.head = 0

    def drop_head(self) -> None:
        self.head += 1
        if self.head > 64 and self.head * 2 > len(self.timestamps):
            del self.timestamps[: self.head]
            del self.values[: self.head]
            self.journaled = max(0, self.journaled - self.head)
            self.head = 0


@dataclass(slots=True)
class Piece:
    """Some points of one series on their way to Dynatrace."""

    series: Series
    timestamps: array[int]
    values: array[float]
    in_flight: dict[int, Piece] | None = field(default=None, repr=False, compare=False)
    """The buffer's register of pieces in flight, which the halves replace this one in."""

    def __len__(self) -> int:
        return len(self.timestamps)

    def split(self) -> tuple[Piece, Piece]:
        mid = len(self.timestamps) // 2
        halves = (Piece(self.series, self.timestamps[:mid], self.values[:mid], self.in_flight),
                  Piece(self.series, self.timestamps[mid:], self.values[mid:], self.in_flight))
        if self.in_flight is not None and self.in_flight.pop(id(self), None) is not None:
            for half in halves:
                self.in_flight[id(half)] = half
        return halves


@dataclass(slots=True)
class DeviceBatch:
    """Everything taken from the buffer for one device in one flush."""

    device: Device
    device_version: int
    pieces: list[Piece]

    @property
    def points(self) -> int:
        return sum(len(p) for p in self.pieces)


class Buffer:
    """Implements `collector.model.Sink` for the sources; `take`/settle for the flush."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        max_points: int,
        max_age: float,
        max_clock_skew: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.catalog = catalog
        self.max_points = max_points
        self.max_age_ms = int(max_age * 1000)
        self.max_skew_ms = int(max_clock_skew * 1000)
        self.clock = clock
        self._series: dict[tuple[str, str, Dimensions], Series] = {}
        self._by_index: list[Series] = []
        self._by_device: dict[str, list[Series]] = {}
        self._log = array("I")
        self._log_head = 0
        self.buffered = 0
        self.in_flight = 0
        self.received = 0
        self.delivered = 0
        self.dropped: dict[DropReason, int] = dict.fromkeys(DROP_REASONS, 0)
        self.invalid_causes: dict[str, int] = {}
        self.journal: Spool | None = None  # set to persist the buffer (see collector.spool)
        self._unjournaled: list[Series] = []
        self._journal_pending: dict[Series, tuple[array[int], array[float]]] = {}
        self._in_flight: dict[int, Piece] = {}
        self._warn = ThrottledLog(log, interval=60.0)

    # ----- the sources' side -------------------------------------------------------------

    def declare_device(self, device: Device, *, configured: bool = False) -> None:
        self.catalog.declare_device(device, configured=configured)
        if self.journal is not None and self.catalog.devices.get(device.id) is device:
            self.journal.device(device)

    def emit(self, reading: Reading) -> None:
        """Accept one reading: O(1), synchronous; bad ones are counted, never raised."""
        self.received += 1
        key = (reading.device, reading.metric, reading.dimensions)
        series = self._series.get(key)
        if series is None or series.generation != self.catalog.generation:
            series = self._check_series(key)
            if series is None:
                return
        problem = self._append(series, reading.timestamp_ms, reading.value)
        if problem is not None:
            self._invalid(problem, key)

    def _append(self, series: Series, ts: int, value: float) -> str | None:
        """Store one point (or count it as expired/overflow); an invalid one's cause."""
        try:
            if not math.isfinite(value):
                return "non-finite value"
            now_ms = int(self.clock() * 1000)
            if ts > now_ms:
                if ts > now_ms + self.max_skew_ms:
                    return "timestamp in the future"
                ts = now_ms  # within the allowed skew: clamp, Dynatrace takes no future points
            if ts < series.not_before_ms:
                return "timestamp before metric registration"
            if ts < now_ms - self.max_age_ms:
                self.dropped["expired"] += 1
                return None
            if self.buffered + self.in_flight >= self.max_points and not self._evict_oldest():
                self.dropped["overflow"] += 1
                return None
            series.timestamps.append(ts)
        except (TypeError, ValueError, OverflowError):
            return "timestamp or value not a number"
        series.values.append(value)
        series.log_pending += 1
        self._log.append(series.index)
        self.buffered += 1
        if self.journal is not None and not series.unjournaled:
            # The point is journaled at the next sync, with the rest of the series' new
            # ones (journal_additions): an emit costs the spool nothing more than this.
            series.unjournaled = True
            self._unjournaled.append(series)
        return None

    def _check_series(self, key: tuple[str, str, Dimensions]) -> Series | None:
        device, metric, dimensions = key
        problem = self.catalog.series_problem(device, metric, dimensions)
        if problem is not None:
            self._invalid(problem, key)
            return None
        series = self._series.get(key)
        if series is None:
            series = Series(len(self._by_index), device, metric, dimensions)
            self._series[key] = series
            self._by_index.append(series)
            self._by_device.setdefault(device, []).append(series)
        series.generation = self.catalog.generation
        series.not_before_ms = self.catalog.metrics[metric].not_before_ms
        return series

    def _invalid(self, cause: str, key: tuple[str, str, Dimensions]) -> None:
        self.dropped["invalid"] += 1
        self.invalid_causes[cause] = self.invalid_causes.get(cause, 0) + 1
        device, metric, dimensions = key
        self._warn.warning((cause, device, metric), "reading dropped as invalid", cause=cause,
                           device=device, metric=metric, dimensions=dict(dimensions))

    def _evict_oldest(self) -> bool:
        """Drop the oldest buffered point (by arrival) to make room; False if none is."""
        log_ = self._log
        while self._log_head < len(log_):
            series = self._by_index[log_[self._log_head]]
            self._log_head += 1
            stale = series.log_pending > len(series)
            series.log_pending -= 1
            if not stale:
                at = series.head
                if self.journal is not None and at < series.journaled:
                    self.journal.removed(series.key, series.timestamps[at : at + 1],
                                         series.values[at : at + 1])
                series.drop_head()
                self.buffered -= 1
                self.dropped["overflow"] += 1
                self._trim_log()
                return True
        self._trim_log()
        return False

    def _trim_log(self) -> None:
        """Keep the arrival log from growing past what it must remember."""
        head = self._log_head
        if head > 4096 and head * 2 > len(self._log):
            del self._log[:head]
            self._log_head = 0
        if len(self._log) - self._log_head > 2 * self.max_points + 4096:
            self._compact_log()

    def _forget_departed(self) -> None:
        """Keep the arrival log in proportion to what is buffered: without overflow nothing
        else trims it, and it would grow by an entry for every point ever received. Runs
        at the end of each flush (`expire`); not with points in flight, whose entries would
        look departed."""
        if self.in_flight == 0 and len(self._log) - self._log_head > 2 * self.buffered + 4096:
            self._compact_log()

    def _compact_log(self) -> None:
        """Forget log entries of points that left their series (delivered, expired)."""
        skip = {s.index: s.log_pending - len(s) for s in self._by_index if s.log_pending > len(s)}
        kept = array("I")
        for index in self._log[self._log_head :]:
            extra = skip.get(index, 0)
            if extra > 0:
                skip[index] = extra - 1
                self._by_index[index].log_pending -= 1
            else:
                kept.append(index)
        self._log, self._log_head = kept, 0

    # ----- the flush's side --------------------------------------------------------------

    def devices_with_points(self) -> Iterator[str]:
        for device, series_list in self._by_device.items():
            if any(len(s) for s in series_list):
                yield device

    def take(self, device_id: str, now: float | None = None) -> DeviceBatch | None:
        """Remove a device's points for sending (expired ones are dropped and counted)."""
        device = self.catalog.devices.get(device_id)
        series_list = self._by_device.get(device_id, [])
        if device is None:
            # Undeclared since (reload): its points can no longer be sent anywhere.
            self._drop_all(series_list, "invalid", "device removed")
            return None
        cutoff = self._cutoff_ms(now)
        pieces: list[Piece] = []
        for series in series_list:
            if not len(series):
                continue
            if series.generation != self.catalog.generation and self._check_series(
                (series.device, series.metric, series.dimensions)
            ) is None:
                self._drop_all([series], "invalid", None)
                continue
            self._journal_new(series)  # in flight, they must survive a crash too
            ts, vs = series.take_all()
            n = len(ts)
            self.buffered -= n
            if min(ts) < cutoff:
                ts, vs = self._drop_expired(series, ts, vs, cutoff)
                n = len(ts)
            if n:
                self.in_flight += n
                piece = Piece(series, ts, vs, self._in_flight)
                self._in_flight[id(piece)] = piece
                pieces.append(piece)
        if not pieces:
            return None
        version = self.catalog.device_versions.get(device_id, 0)
        return DeviceBatch(device, version, pieces)

    def accept(self, piece: Piece) -> None:
        self._land(piece)
        self.delivered += len(piece)

    def reject(self, piece: Piece, reason: DropReason) -> None:
        self._land(piece)
        self.dropped[reason] += len(piece)

    def keep(self, piece: Piece) -> None:
        """Put a piece back for a later retry (still subject to max_age)."""
        self._in_flight.pop(id(piece), None)
        self.in_flight -= len(piece)
        self.buffered += len(piece)
        piece.series.put_back(piece.timestamps, piece.values)

    def _land(self, piece: Piece) -> None:
        """A piece left for good (delivered or dropped)."""
        self._in_flight.pop(id(piece), None)
        self.in_flight -= len(piece)
        if self.journal is not None:
            self.journal.removed(piece.series.key, piece.timestamps, piece.values)

    def _drop_expired(self, series: Series, ts: array[int], vs: array[float],
                      cutoff: int) -> tuple[array[int], array[float]]:
        keep = [i for i, t in enumerate(ts) if t >= cutoff]
        if self.journal is not None:
            gone = [i for i, t in enumerate(ts) if t < cutoff]
            self.journal.removed(series.key, array("q", (ts[i] for i in gone)),
                                 array("d", (vs[i] for i in gone)))
        self.dropped["expired"] += len(ts) - len(keep)
        return array("q", (ts[i] for i in keep)), array("d", (vs[i] for i in keep))

    def expire(self, now: float | None = None) -> int:
        """Drop buffered points older than max_age (while nothing is being sent)."""
        cutoff = self._cutoff_ms(now)
        dropped = 0
        for series in self._by_index:
            if not len(series):
                continue
            ts = series.timestamps[series.head :]
            if min(ts) >= cutoff:
                continue
            vs = series.values[series.head :]
            self._journal_new(series)  # so that the journal can record them gone
            series.timestamps, series.values = self._drop_expired(series, ts, vs, cutoff)
            series.head, series.journaled = 0, len(series.timestamps)
            dropped += len(ts) - len(series.timestamps)
        self.buffered -= dropped
        self._forget_departed()
        return dropped

    def _drop_all(self, series_list: list[Series], reason: DropReason, cause: str | None) -> None:
        for series in series_list:
            n = len(series)
            if n:
                self._journal_new(series)  # so that the journal's removal matches an add
                ts, vs = series.take_all()
                if self.journal is not None:
                    self.journal.removed(series.key, ts, vs)
                self.buffered -= n
                self.dropped[reason] += n
                if cause:
                    self.invalid_causes[cause] = self.invalid_causes.get(cause, 0) + n

    def _cutoff_ms(self, now: float | None) -> int:
        return int((self.clock() if now is None else now) * 1000) - self.max_age_ms

    def snapshot(self) -> dict[tuple[str, str, Dimensions], tuple[array[int], array[float]]]:
        """Copies of every point not yet delivered or dropped (buffered and in flight)."""
        points: dict[tuple[str, str, Dimensions], tuple[array[int], array[float]]] = {}
        for series in self._by_index:
            if len(series):
                points[series.key] = (series.timestamps[series.head :],
                                      series.values[series.head :])
        for piece in self._in_flight.values():
            ts, vs = points.setdefault(piece.series.key, (array("q"), array("d")))
            ts.extend(piece.timestamps)
            vs.extend(piece.values)
        return points

    # ----- the spool's side --------------------------------------------------------------

    def journal_additions(self) -> None:
        """Hand the journal every point added since the last call (before each sync)."""
        for series in self._unjournaled:
            self._journal_new(series)
            series.unjournaled = False
        self._unjournaled.clear()
        pending, self._journal_pending = self._journal_pending, {}
        if pending and self.journal is not None:
            self.journal.added({series.key: points for series, points in pending.items()})

    def journal_caught_up(self) -> None:
        """Every point is in the journal now (a snapshot of `snapshot()` was taken)."""
        for series in self._by_index:
            series.journaled = len(series.timestamps)
            series.unjournaled = False
        self._unjournaled.clear()
        self._journal_pending = {}

    def _journal_new(self, series: Series) -> None:
        """Set aside the points of `series` the journal has not seen yet (for the next sync:
        taken for a flush or expired before it, they must be in the journal too)."""
        start, end = max(series.head, series.journaled), len(series.timestamps)
        if start < end and self.journal is not None:
            ts, vs = series.timestamps[start:end], series.values[start:end]
            pending = self._journal_pending.get(series)
            if pending is None:
                self._journal_pending[series] = (ts, vs)
            else:
                pending[0].extend(ts)
                pending[1].extend(vs)
        series.journaled = end

    def restore(self, devices: dict[str, Device],
                points: dict[tuple[str, str, Dimensions], tuple[array[int], array[float]]]
                ) -> None:
        """Take back points from a spool (as readings: the usual rules and counts apply)."""
        for device in devices.values():
            self.declare_device(device)
        for (device_id, metric, dimensions), (ts, vs) in points.items():
            for t, v in zip(ts, vs, strict=True):
                self.emit(Reading(device_id, metric, dimensions, t, v))

    def buffered_by_device(self) -> dict[str, int]:
        return {d: sum(len(s) for s in ss) for d, ss in self._by_device.items()}

    def oldest_ms(self) -> int | None:
        """Timestamp of the oldest buffered point, or None when empty (for readiness)."""
        heads = [min(s.timestamps[s.head :]) for s in self._by_index if len(s)]
        return min(heads) if heads else None
