"""Buffer rules: nothing lost, nothing duplicated, age and cap rules, exact accounting."""

from __future__ import annotations

import math
from collections import Counter

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from collector.buffer import Buffer, DeviceBatch
from collector.catalog import Catalog, MetricInfo
from collector.flush import BodyEncoder
from collector.model import Device, Reading

T0 = 1_800_000_000.0  # a fixed wall clock for the tests (seconds)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def make_buffer(max_points: int = 1000, max_age: float = 100.0,
                clock: Clock | None = None) -> tuple[Buffer, Catalog, Clock]:
    clock = clock or Clock()
    catalog = Catalog()
    catalog.set_metric(MetricInfo("custom:m1", frozenset({"k"}), frozenset({"T"})))
    catalog.set_metric(MetricInfo("custom:m2", frozenset(), frozenset({"T"}),
                                  not_before_ms=int((T0 - 50) * 1000)))
    catalog.set_metric(MetricInfo("custom:off", frozenset(), frozenset({"T"}), enabled=False))
    buffer = Buffer(catalog, max_points=max_points, max_age=max_age, clock=clock)
    buffer.declare_device(Device("d1", "T"))
    buffer.declare_device(Device("d2", "T"))
    buffer.declare_device(Device("other", "U"))
    return buffer, catalog, clock


def ms(t: float) -> int:
    return int(t * 1000)


def accounted(b: Buffer) -> int:
    return b.delivered + sum(b.dropped.values()) + b.buffered + b.in_flight


def values_in(batch: DeviceBatch) -> list[float]:
    return [v for piece in batch.pieces for v in piece.values]


def test_take_returns_what_was_emitted_per_series() -> None:
    b, _, clock = make_buffer()
    b.emit(Reading("d1", "custom:m1", (("k", "a"),), ms(clock.now - 3), 1.0))
    b.emit(Reading("d1", "custom:m1", (("k", "b"),), ms(clock.now - 2), 2.0))
    b.emit(Reading("d1", "custom:m1", (("k", "a"),), ms(clock.now - 1), 3.0))
    batch = b.take("d1")
    assert batch is not None
    got = {p.series.dimensions: (list(p.timestamps), list(p.values)) for p in batch.pieces}
    assert got == {
        (("k", "a"),): ([ms(T0 - 3), ms(T0 - 1)], [1.0, 3.0]),
        (("k", "b"),): ([ms(T0 - 2)], [2.0]),
    }
    assert b.in_flight == 3 and b.buffered == 0
    assert b.take("d2") is None


def test_invalid_readings_are_counted_by_cause() -> None:
    b, _, clock = make_buffer()
    now = ms(clock.now)
    bad = [
        Reading("d1", "custom:m1", (("k", "a"),), now, math.nan),
        Reading("d1", "custom:m1", (("k", "a"),), now, math.inf),
        Reading("d1", "custom:m1", (("k", "a"),), now + 120_000, 1.0),
        Reading("d1", "custom:m2", (), ms(T0 - 60), 1.0),
        Reading("d1", "custom:nope", (), now, 1.0),
        Reading("d1", "custom:off", (), now, 1.0),
        Reading("ghost", "custom:m1", (("k", "a"),), now, 1.0),
        Reading("d1", "custom:m1", (("x", "a"),), now, 1.0),
        Reading("other", "custom:m1", (("k", "a"),), now, 1.0),
        Reading("d1", "custom:m1", (("k", "a" * 129),), now, 1.0),
        Reading("d1", "custom:m1", (("k", "a"),), now, "12"),  # type: ignore[arg-type]
    ]
    for reading in bad:
        b.emit(reading)
    assert b.dropped["invalid"] == len(bad)
    assert b.buffered == 0
    assert b.invalid_causes == {
        "non-finite value": 2,
        "timestamp in the future": 1,
        "timestamp before metric registration": 1,
        "unknown metric": 1,
        "metric disabled": 1,
        "unknown device": 1,
        "undeclared dimension": 1,
        "device type not in metric types": 1,
        "dimension value empty or too long": 1,
        "timestamp or value not a number": 1,
    }


def test_small_future_skew_is_clamped_to_now() -> None:
    b, _, clock = make_buffer()
    b.emit(Reading("d1", "custom:m2", (), ms(clock.now) + 5_000, 7.0))
    batch = b.take("d1")
    assert batch is not None
    assert list(batch.pieces[0].timestamps) == [ms(clock.now)]


def test_when_full_the_oldest_arrivals_go_first() -> None:
    b, _, clock = make_buffer(max_points=5)
    for i in range(8):
        device = "d1" if i % 2 else "d2"
        b.emit(Reading(device, "custom:m2", (), ms(clock.now - 10 + i), float(i)))
    assert b.buffered == 5
    assert b.dropped["overflow"] == 3
    kept = sorted(v for d in ("d1", "d2") for batch in [b.take(d)] if batch
                  for v in values_in(batch))
    assert kept == [3.0, 4.0, 5.0, 6.0, 7.0]


def test_points_in_flight_count_against_the_cap() -> None:
    b, _, clock = make_buffer(max_points=3)
    for i in range(3):
        b.emit(Reading("d1", "custom:m2", (), ms(clock.now), float(i)))
    batch = b.take("d1")
    assert batch is not None
    b.emit(Reading("d1", "custom:m2", (), ms(clock.now), 9.0))
    assert b.dropped["overflow"] == 1 and b.buffered == 0
    for piece in batch.pieces:
        b.keep(piece)
    assert b.buffered == 3 and accounted(b) == b.received


def test_expired_points_are_dropped_at_take_and_by_expire() -> None:
    b, _, clock = make_buffer(max_age=100)
    b.emit(Reading("d1", "custom:m2", (), ms(clock.now - 10), 1.0))
    b.emit(Reading("d1", "custom:m2", (), ms(clock.now - 1), 2.0))
    b.emit(Reading("d2", "custom:m2", (), ms(clock.now - 10), 3.0))
    b.emit(Reading("d2", "custom:m1", (("k", "x"),), ms(clock.now - 200), 4.0))  # expired
    assert b.dropped["expired"] == 1
    clock.now += 95
    batch = b.take("d1")
    assert batch is not None and values_in(batch) == [2.0]
    assert b.expire() == 1  # d2's point from T0-10
    assert b.dropped["expired"] == 3
    assert b.buffered == 0 and accounted(b) == b.received


def test_memory_follows_what_is_buffered_not_what_ever_passed() -> None:
    # Every point adds an entry to the arrival log (for overflow eviction). Without overflow
    # nothing used to trim it: 4 bytes for every point ever received, found by the soak
    # (bench/soak.py) as RSS growing by about 3 MiB a minute at 5,000 points/s.
    b, _, clock = make_buffer(max_points=1_000_000)
    for flush in range(40):
        for i in range(5_000):
            b.emit(Reading("d1", "custom:m1", (("k", f"s{i % 7}"),), ms(clock.now), float(i)))
        batch = b.take("d1")
        assert batch is not None
        for piece in batch.pieces[::2]:
            b.accept(piece)
        for piece in batch.pieces[1::2]:
            b.keep(piece)  # some go back, as after a failed push
        b.expire()  # the flush's end, nothing in flight
        assert len(b._log) - b._log_head <= 2 * (b.buffered + b.in_flight) + 4096, flush
    # The log still finds the oldest arrivals: fill up, and the oldest go first.
    oldest = min(min(s.timestamps[s.head:]) for s in b._by_index if len(s))
    b.max_points = b.buffered
    b.emit(Reading("d1", "custom:m1", (("k", "new"),), ms(clock.now) + 1, 1.0))
    assert b.dropped["overflow"] == 1
    assert min(min(s.timestamps[s.head:]) for s in b._by_index if len(s)) >= oldest
    assert accounted(b) == b.received


def test_a_piece_split_for_the_body_size_leaves_nothing_in_flight() -> None:
    # A series with more points than one body holds is split by the flush; the halves are
    # settled, and the piece they came from used to stay registered as in flight forever:
    # memory that grew after every outage (bench/soak.py), and points a spool snapshot
    # would have kept (and resent) although they were delivered.
    b, _, clock = make_buffer()
    for i in range(300):
        b.emit(Reading("d1", "custom:m1", (("k", "a"),), ms(clock.now) - i, float(i)))
    batch = b.take("d1")
    assert batch is not None
    bodies = BodyEncoder(1024).bodies(batch.device, batch.pieces, with_metadata=False)
    pieces = [piece for body in bodies for piece in body.pieces]
    assert len(pieces) > 2
    for piece in pieces[1:]:
        b.accept(piece)
    b.keep(pieces[0])
    assert b.in_flight == 0 and not b._in_flight
    assert {k: len(ts) for k, (ts, _) in b.snapshot().items()} == {
        ("d1", "custom:m1", (("k", "a"),)): len(pieces[0])}


def test_reject_and_accept_are_counted() -> None:
    b, _, clock = make_buffer()
    for i in range(4):
        b.emit(Reading("d1", "custom:m1", (("k", str(i % 2)),), ms(clock.now), float(i)))
    batch = b.take("d1")
    assert batch is not None
    first, second = batch.pieces
    b.accept(first)
    b.reject(second, "rejected")
    assert b.delivered == 2 and b.dropped["rejected"] == 2
    assert accounted(b) == 4


class BufferMachine(RuleBasedStateMachine):
    """Random emits, takes with accept/reject/keep, expiry and time: the books always balance."""

    @initialize(max_points=st.integers(1, 30))
    def setup(self, max_points: int) -> None:
        self.max_points = max_points
        self.buffer, self.catalog, self.clock = make_buffer(max_points=max_points, max_age=100)
        self.next_id = 0
        self.emitted: dict[float, int] = {}  # value (unique id) -> timestamp ms
        self.delivered: Counter[float] = Counter()
        self.rejected: Counter[float] = Counter()

    @rule(device=st.sampled_from(["d1", "d2"]), key=st.sampled_from(["a", "b", None]),
          age=st.floats(0, 150))
    def emit(self, device: str, key: str | None, age: float) -> None:
        self.next_id += 1
        value = float(self.next_id)
        ts = ms(self.clock.now - age)
        if key is None:
            reading = Reading(device, "custom:m2", (), ts, value)
        else:
            reading = Reading(device, "custom:m1", (("k", key),), ts, value)
        if ts >= ms(T0 - 50) or key is not None:
            self.emitted[value] = ts
        self.buffer.emit(reading)

    @rule(device=st.sampled_from(["d1", "d2"]),
          choices=st.lists(st.sampled_from(["accept", "reject", "keep"]), min_size=1))
    def flush_device(self, device: str, choices: list[str]) -> None:
        cutoff = ms(self.clock.now) - 100_000
        batch = self.buffer.take(device)
        if batch is None:
            return
        for i, piece in enumerate(batch.pieces):
            assert all(t >= cutoff for t in piece.timestamps), "expired point taken"
            assert piece.series.device == device
            choice = choices[i % len(choices)]
            if choice == "accept":
                self.delivered.update(piece.values)
                self.buffer.accept(piece)
            elif choice == "reject":
                self.rejected.update(piece.values)
                self.buffer.reject(piece, "rejected")
            else:
                self.buffer.keep(piece)

    @rule()
    def expire(self) -> None:
        self.buffer.expire()

    @rule(seconds=st.floats(0, 60))
    def advance(self, seconds: float) -> None:
        self.clock.now += seconds

    @invariant()
    def books_balance(self) -> None:
        b = self.buffer
        assert b.received == accounted(b)
        assert b.buffered + b.in_flight <= self.max_points
        assert b.delivered == sum(self.delivered.values())
        assert b.dropped["rejected"] == sum(self.rejected.values())

    @invariant()
    def nothing_duplicated_nothing_invented(self) -> None:
        b = self.buffer
        buffered = Counter(v for s in b._by_index for v in s.values[s.head:])
        assert all(n == 1 for n in self.delivered.values()), "delivered twice"
        assert all(n == 1 for n in buffered.values()), "buffered twice"
        seen = self.delivered + self.rejected + buffered
        assert all(n == 1 for n in seen.values()), "one point in two places"
        assert set(seen) <= set(self.emitted), "a point nobody emitted"
        # Whatever valid point is not delivered, rejected or buffered was counted as
        # expired or overflow: nothing vanished silently.
        missing = len(self.emitted) - len(seen)
        assert missing == b.dropped["expired"] + b.dropped["overflow"]


TestBufferMachine = BufferMachine.TestCase
TestBufferMachine.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


def test_configured_devices_win_over_what_a_source_declares() -> None:
    b, catalog, _ = make_buffer()
    configured = Device("fw", "T", display_name="From the config", tags=("a",))
    b.declare_device(configured, configured=True)
    b.declare_device(Device("fw", "T", display_name="From SNMP"))
    assert catalog.devices["fw"] == configured
    b.declare_device(Device("sensor-1", "T", display_name="Discovered"))
    assert catalog.devices["sensor-1"].display_name == "Discovered"
