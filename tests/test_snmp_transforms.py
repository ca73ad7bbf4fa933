"""Counter transforms and value reading: wraps, resets, first samples, agent timing, text."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from collector.sources.snmp.engine import Kind, Varbind
from collector.sources.snmp.transforms import (
    AgentClock,
    CounterState,
    counter_bits,
    counter_increase,
    read_number,
    read_text,
)

OID = (1, 3, 6, 1, 4, 1, 99999, 1, 0)


@given(bits=st.sampled_from([32, 64]), data=st.data())
def test_a_wrap_gives_the_true_increase(bits: int, data: st.DataObject) -> None:
    previous = data.draw(st.integers(0, 2**bits - 1))
    increase = data.draw(st.integers(0, 2 ** (bits - 1) - 1))
    current = (previous + increase) % 2**bits
    assert counter_increase(previous, current, bits) == increase


@given(bits=st.sampled_from([32, 64]), data=st.data())
def test_a_drop_no_wrap_explains_is_a_reset(bits: int, data: st.DataObject) -> None:
    # After a reset the counter restarts near 0, far below where it was.
    previous = data.draw(st.integers(2 ** (bits - 1) // 2, 2 ** (bits - 1)))
    current = data.draw(st.integers(0, previous // 4))
    assert counter_increase(previous, current, bits) is None


def test_a_drop_of_a_value_that_is_not_a_counter_is_a_reset() -> None:
    assert counter_increase(10.5, 3.0, None) is None
    assert counter_increase(3, 10, None) == 7


def test_a_number_of_unknown_type_wraps_at_32_bits_while_it_fits() -> None:
    # gufo_snmp reports no types: a counter is taken for a Counter32 while it fits 32 bits.
    bits = counter_bits(Kind.NUMBER)
    assert counter_increase(2**32 - 300, 700, bits) == 1000
    assert counter_increase(2**40, 2**40 + 5, bits) == 5
    assert counter_increase(2**64 - 300, 700, bits) == 1000  # beyond 32 bits: a Counter64
    assert counter_increase(1_000_000_000, 5, bits) is None  # no wrap explains that drop
    assert counter_increase(2**40, 5, bits) is None


def test_first_sample_sets_the_baseline_then_delta_and_rate() -> None:
    state = CounterState()
    assert state.apply("d", "delta", 100, bits=32, at=10.0, epoch=0) is None
    assert state.apply("r", "rate", 1000, bits=64, at=10.0, epoch=0) is None
    assert state.apply("d", "delta", 150, bits=32, at=20.0, epoch=0) == 50
    assert state.apply("r", "rate", 6000, bits=64, at=20.0, epoch=0, scale=8) == 4000.0
    assert state.apply("g", "gauge", 7, bits=None, at=20.0, epoch=0, scale=0.5) == 3.5
    assert state.resets == 0


def test_counter64_precision_is_kept_near_the_top_of_its_range() -> None:
    state = CounterState()
    state.apply("c", "delta", 2**64 - 3, bits=64, at=0.0, epoch=0)
    assert state.apply("c", "delta", 2**64 - 2, bits=64, at=1.0, epoch=0) == 1
    assert state.apply("c", "delta", 4, bits=64, at=2.0, epoch=0) == 6  # wrapped


def test_an_agent_restart_skips_one_sample_and_counts_a_reset() -> None:
    state = CounterState()
    state.apply("c", "rate", 5000, bits=32, at=100.0, epoch=0)
    assert state.apply("c", "rate", 20, bits=32, at=1.0, epoch=1) is None
    assert state.resets == 1
    assert state.apply("c", "rate", 120, bits=32, at=11.0, epoch=1) == 10.0


def test_an_implausible_drop_skips_one_sample() -> None:
    state = CounterState()
    # As a wrap this would be an increase of 2.8e9: more than half the Counter32 range.
    state.apply("c", "delta", 1_500_000_000, bits=32, at=0.0, epoch=0)
    assert state.apply("c", "delta", 1000, bits=32, at=10.0, epoch=0) is None
    assert state.resets == 1
    assert state.apply("c", "delta", 1500, bits=32, at=20.0, epoch=0) == 500


def test_a_rate_needs_time_to_pass() -> None:
    state = CounterState()
    state.apply("c", "rate", 1, bits=32, at=5.0, epoch=0)
    assert state.apply("c", "rate", 9, bits=32, at=5.0, epoch=0) is None


def test_series_not_seen_are_forgotten() -> None:
    state = CounterState()
    state.apply("a", "delta", 1, bits=32, at=0.0, epoch=0)
    state.apply("b", "delta", 1, bits=32, at=0.0, epoch=0)
    state.forget_unseen()
    state.apply("a", "delta", 2, bits=32, at=1.0, epoch=0)
    state.forget_unseen()  # b was not polled this time
    assert state.apply("a", "delta", 5, bits=32, at=2.0, epoch=0) == 3
    assert state.apply("b", "delta", 5, bits=32, at=2.0, epoch=0) is None  # a new baseline


def test_agent_clock_undoes_the_uptime_wrap_and_detects_restarts() -> None:
    clock = AgentClock()
    assert clock.update(2**32 - 500, local=0.0) == ((2**32 - 500) / 100, 0)
    # 10 s later the 32-bit tick counter wrapped: time goes on, same epoch.
    seconds, epoch = clock.update(500, local=10.0)
    assert (seconds, epoch) == ((2**32 + 500) / 100, 0)
    # Then sysUpTime is back at 2 s although 60 s passed: the agent restarted.
    seconds, epoch = clock.update(200, local=70.0)
    assert (seconds, epoch) == (2.0, 1)
    assert clock.update(1200, local=80.0) == (12.0, 1)


def test_agent_clock_falls_back_to_the_collector_clock() -> None:
    clock = AgentClock()
    assert clock.update(None, local=5.0) == (5.0, 0)
    assert clock.update(None, local=9.0) == (9.0, 0)
    assert clock.update(100, local=10.0) == (1.0, 1)  # another basis: a new epoch


def test_read_number_parses_numeric_text_and_counts_the_rest() -> None:
    def number(kind: Kind, value: int | bytes | None) -> tuple[object, object]:
        return read_number(Varbind(OID, kind, value))

    assert number(Kind.COUNTER64, 2**64 - 1) == (2**64 - 1, None)
    assert number(Kind.NUMBER, -3) == (-3, None)
    assert number(Kind.OCTETS, b" 42.5 ") == (42.5, None)
    assert number(Kind.OCTETS, b"17\x00") == (17, None)
    assert number(Kind.OCTETS, b"up") == (None, "not_a_number")
    assert number(Kind.OCTETS, b"nan") == (None, "not_a_number")
    assert number(Kind.OTHER, None) == (None, "not_a_number")
    assert number(Kind.NO_SUCH_OBJECT, None) == (None, "no_such_object")
    assert number(Kind.NO_SUCH_INSTANCE, None) == (None, "no_such_instance")
    assert number(Kind.END_OF_MIB_VIEW, None) == (None, "end_of_mib_view")


def test_read_text_for_dimension_values() -> None:
    assert read_text(Varbind(OID, Kind.OCTETS, b"GigabitEthernet0/1\x00")) == "GigabitEthernet0/1"
    assert read_text(Varbind(OID, Kind.OCTETS, b"\x00\x1a\x2b\xff")) == "00:1a:2b:ff"
    assert read_text(Varbind(OID, Kind.INTEGER, 7)) == "7"
    assert read_text(Varbind(OID, Kind.NUMBER, 7)) == "7"
    assert read_text(Varbind(OID, Kind.OCTETS, b"x" * 300)) == "x" * 128
    assert read_text(Varbind(OID, Kind.OCTETS, b"")) is None
    assert read_text(Varbind(OID, Kind.NO_SUCH_INSTANCE, None)) is None
