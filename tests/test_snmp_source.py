"""The SNMP source against real snmpd agents, emitting into a list: exact values per poll.

Polls are driven one at a time (`TargetPoller.poll`) where values are asserted exactly, so
the agent's values change between polls under the test's control; the scheduling tests run
the source itself. Assertions compare targets with each other, never with wall time.
Every test runs on both engines and expects the same readings.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import structlog
from structlog.typing import EventDict

from collector.config import parse_config
from collector.config.snmp import EngineName, SnmpSourceConfig
from collector.logs import get_logger
from collector.model import Device, Reading
from collector.sources import SourceContext
from collector.sources.snmp.source import SnmpSource, open_engine
from collector.telemetry import Telemetry
from tests.helpers import wait_for
from tests.snmpd import AUTH_KEY, COMMUNITY, ENTERPRISE, PRIV_KEY, V3_USER, Start

Values = dict[str, tuple[str, int | str]]
UPTIME = "1.3.6.1.2.1.1.3.0"
E = ENTERPRISE

HEAD = """\
dynatrace:
  url: https://abc12345.live.dynatrace.com
  token: t
metrics:
  custom:t.gauge: {display_name: g, types: [T]}
  custom:t.delta: {display_name: d, types: [T]}
  custom:t.rate: {display_name: r, types: [T]}
  custom:t.text: {display_name: x, types: [T]}
  custom:t.missing: {display_name: m, types: [T]}
  custom:t.port: {display_name: p, dimensions: [port, slot], types: [T]}
  custom:t.port.rate: {display_name: pr, dimensions: [port, slot], types: [T]}
"""


@pytest.fixture(params=["pysnmp", "gufo"])
def engine(request: pytest.FixtureRequest) -> EngineName:
    name: EngineName = request.param
    return name


class ListSink:
    def __init__(self) -> None:
        self.devices: dict[str, Device] = {}
        self.readings: list[Reading] = []

    def declare_device(self, device: Device) -> None:
        self.devices[device.id] = device

    def emit(self, reading: Reading) -> None:
        self.readings.append(reading)

    def take(self) -> dict[tuple[str, str, tuple[tuple[str, str], ...]], float]:
        """Readings since the last call, by (device, metric, dimensions)."""
        taken = {(r.device, r.metric, r.dimensions): r.value for r in self.readings}
        self.readings.clear()
        return taken


def make_source(engine: EngineName, sources_yaml: str, telemetry: Telemetry | None = None,
                sink: ListSink | None = None) -> tuple[SnmpSource, ListSink, Telemetry]:
    sources_yaml = sources_yaml.replace("  - type: snmp\n",
                                        f"  - type: snmp\n    engine: {engine}\n")
    config = parse_config(HEAD + sources_yaml, "t.yaml", {})
    source_config = config.sources[0]
    assert isinstance(source_config, SnmpSourceConfig)
    sink = sink or ListSink()
    telemetry = telemetry or Telemetry()
    ctx = SourceContext(sink=sink, telemetry=telemetry, log=get_logger("test.snmp"))
    return SnmpSource(source_config, ctx), sink, telemetry


def counted(telemetry: Telemetry, name: str, *labels: str) -> float:
    family = telemetry.families.get(name)
    return 0.0 if family is None else family.value(*labels)


async def test_scalars_gauge_delta_rate_wrap_and_first_sample(snmpd: Start,
                                                              engine: EngineName) -> None:
    agent = snmpd()
    source, sink, _ = make_source(engine, f"""\
sources:
  - type: snmp
    name: s
    community: {COMMUNITY}
    device_type: T
    scalars:
      - {{metric: custom:t.gauge, oid: {E}.1.0, scale: 2}}
      - {{metric: custom:t.delta, oid: {E}.2.0, transform: delta}}
      - {{metric: custom:t.rate, oid: {E}.3.0, transform: rate, scale: 8}}
      - {{metric: custom:t.text, oid: {E}.4.0}}
    targets:
      - {{host: "{agent.host}", device: fw}}
""")
    target = source.targets[0]
    async with open_engine(engine) as snmp:
        agent.set({UPTIME: ("timeticks", 1000), f"{E}.1.0": ("gauge", 5),
                   f"{E}.2.0": ("counter", 2**32 - 300), f"{E}.3.0": ("counter64", 10**12),
                   f"{E}.4.0": ("string", "42.5")})
        assert await target.poll(snmp)
        # The first sample of a counter only sets its baseline.
        assert sink.take() == {("fw", "custom:t.gauge", ()): 10.0,
                               ("fw", "custom:t.text", ()): 42.5}
        # 20 s later on the agent's clock; the Counter32 wrapped.
        agent.set({UPTIME: ("timeticks", 3000), f"{E}.1.0": ("gauge", 6),
                   f"{E}.2.0": ("counter", 700), f"{E}.3.0": ("counter64", 10**12 + 2500),
                   f"{E}.4.0": ("string", "41")})
        assert await target.poll(snmp)
        assert sink.take() == {("fw", "custom:t.gauge", ()): 12.0,
                               ("fw", "custom:t.delta", ()): 1000.0,
                               ("fw", "custom:t.rate", ()): 1000.0,  # 2500 B / 20 s * 8
                               ("fw", "custom:t.text", ()): 41.0}


async def test_a_restart_or_an_implausible_drop_skips_one_sample(snmpd: Start,
                                                                 engine: EngineName) -> None:
    agent = snmpd()
    source, sink, telemetry = make_source(engine, f"""\
sources:
  - type: snmp
    name: s
    community: {COMMUNITY}
    device_type: T
    scalars:
      - {{metric: custom:t.delta, oid: {E}.2.0, transform: delta}}
      - {{metric: custom:t.rate, oid: {E}.3.0, transform: rate}}
    targets:
      - {{host: "{agent.host}", device: fw}}
""")
    target = source.targets[0]
    polls: list[tuple[int, int, int]] = [
        (100_000, 5_000, 900_000), (101_000, 6_000, 901_000),  # a normal step
        (500, 10, 100),  # sysUpTime went back: the agent restarted
        (1_500, 60, 1_100),  # counting again from the new baseline
        (2_500, 70, 5),  # only the Counter64 dropped, with no restart: a reset
        (3_500, 80, 1_005),
    ]
    results = []
    async with open_engine(engine) as snmp:
        for uptime, c32, c64 in polls:
            agent.set({UPTIME: ("timeticks", uptime), f"{E}.2.0": ("counter", c32),
                       f"{E}.3.0": ("counter64", c64)})
            assert await target.poll(snmp)
            taken = sink.take()
            results.append((taken.get(("fw", "custom:t.delta", ())),
                            taken.get(("fw", "custom:t.rate", ()))))
    assert results == [(None, None), (1000.0, 100.0), (None, None), (50.0, 100.0),
                       (10.0, None), (10.0, 100.0)]
    assert counted(telemetry, "snmp_counter_resets", "s", "fw") == 3


async def test_table_rows_become_dimensioned_series_with_filters(snmpd: Start,
                                                                 engine: EngineName) -> None:
    values: Values = {UPTIME: ("timeticks", 100)}
    names = {1: "eth0", 2: "lo", 3: "eth1", 4: "eth2", 5: None}
    for row, name in names.items():
        if name:
            values[f"{E}.5.1.1.{row}"] = ("string", name)
        values[f"{E}.5.1.2.{row}"] = ("counter", row * 100)
        values[f"{E}.5.1.3.{row}"] = ("integer", 2 if row == 4 else 1)  # eth2 is down
    agent = snmpd(values=values)
    source, sink, telemetry = make_source(engine, f"""\
sources:
  - type: snmp
    name: s
    community: {COMMUNITY}
    device_type: T
    max_repetitions: 2
    tables:
      - dimensions: {{port: {E}.5.1.1, slot: index}}
        exclude: {{port: "lo.*", {E}.5.1.3: "2"}}
        metrics:
          - {{metric: custom:t.port, oid: {E}.5.1.2}}
          - {{metric: custom:t.port.rate, oid: {E}.5.1.2, transform: rate}}
    targets:
      - {{host: "{agent.host}", device: sw}}
""")
    async with open_engine(engine) as snmp:
        assert await source.targets[0].poll(snmp)
        assert sink.take() == {
            ("sw", "custom:t.port", (("port", "eth0"), ("slot", "1"))): 100.0,
            ("sw", "custom:t.port", (("port", "eth1"), ("slot", "3"))): 300.0,
        }
        values[UPTIME] = ("timeticks", 1100)
        values[f"{E}.5.1.2.3"] = ("counter", 800)
        agent.set(values)
        assert await source.targets[0].poll(snmp)
        taken = sink.take()
    assert taken[("sw", "custom:t.port.rate", (("port", "eth1"), ("slot", "3")))] == 50.0
    assert taken[("sw", "custom:t.port.rate", (("port", "eth0"), ("slot", "1")))] == 0.0
    assert len(taken) == 4
    # Row 5 has no name: no series for it, counted (two metrics, two polls).
    assert counted(telemetry, "snmp_bad_values", "s", "sw", "missing_dimension") == 4


async def test_bad_values_are_counted_by_reason(snmpd: Start, engine: EngineName) -> None:
    agent = snmpd(values={UPTIME: ("timeticks", 1), f"{E}.1.0": ("string", "up"),
                          f"{E}.2.0": ("objectid", ".1.3.6.1")})
    source, sink, telemetry = make_source(engine, f"""\
sources:
  - type: snmp
    name: s
    community: {COMMUNITY}
    device_type: T
    scalars:
      - {{metric: custom:t.text, oid: {E}.1.0}}
      - {{metric: custom:t.gauge, oid: {E}.2.0}}
      - {{metric: custom:t.missing, oid: {E}.9.0}}
      - {{metric: custom:t.missing, oid: 1.3.6.1.6.3.99.0}}
    targets:
      - {{host: "{agent.host}", device: fw}}
""")
    async with open_engine(engine) as snmp:
        assert await source.targets[0].poll(snmp)
    assert sink.readings == []
    bad = telemetry.families["snmp_bad_values"].by_label()
    if engine == "gufo":  # gufo_snmp leaves missing values out: it cannot say which kind
        assert bad == {("s", "fw", "not_a_number"): 2, ("s", "fw", "no_such_object"): 2}
    else:
        assert bad == {("s", "fw", "not_a_number"): 2, ("s", "fw", "no_such_instance"): 1,
                       ("s", "fw", "no_such_object"): 1}


async def test_profiles_with_filters_produce_their_metrics(snmpd: Start,
                                                           engine: EngineName) -> None:
    values: Values = {UPTIME: ("timeticks", 0)}
    interfaces = {1: ("lo", 1), 2: ("eth0", 1), 3: ("eth1", 2)}
    for i, (name, status) in interfaces.items():
        values |= {f"1.3.6.1.2.1.31.1.1.1.1.{i}": ("string", name),
                   f"1.3.6.1.2.1.31.1.1.1.6.{i}": ("counter64", 1000 * i),
                   f"1.3.6.1.2.1.31.1.1.1.10.{i}": ("counter64", 2000 * i),
                   f"1.3.6.1.2.1.31.1.1.1.15.{i}": ("gauge", 1000),
                   f"1.3.6.1.2.1.2.2.1.8.{i}": ("integer", status),
                   f"1.3.6.1.2.1.2.2.1.13.{i}": ("counter", 1),
                   f"1.3.6.1.2.1.2.2.1.14.{i}": ("counter", 2),
                   f"1.3.6.1.2.1.2.2.1.19.{i}": ("counter", 3),
                   f"1.3.6.1.2.1.2.2.1.20.{i}": ("counter", 4)}
    values |= {"1.3.6.1.2.1.25.3.3.1.2.196608": ("integer", 15),
               "1.3.6.1.2.1.25.3.3.1.2.196609": ("integer", 35),
               "1.3.6.1.2.1.25.2.3.1.3.1": ("string", "Physical memory"),
               "1.3.6.1.2.1.25.2.3.1.5.1": ("integer", 4000),
               "1.3.6.1.2.1.25.2.3.1.6.1": ("integer", 1000),
               "1.3.6.1.2.1.25.2.3.1.3.2": ("string", "/boot"),  # size 0: no percent
               "1.3.6.1.2.1.25.2.3.1.5.2": ("integer", 0),
               "1.3.6.1.2.1.25.2.3.1.6.2": ("integer", 0)}
    agent = snmpd(values=values)
    source, sink, telemetry = make_source(engine, f"""\
sources:
  - type: snmp
    name: s
    community: {COMMUNITY}
    device_type: T
    profiles: [uptime, host-resources]
    targets:
      - host: "{agent.host}"
        device: rtr
        profiles:
          - name: if-mib
            exclude: {{interface: "lo", 1.3.6.1.2.1.2.2.1.8: "2"}}
""")
    async with open_engine(engine) as snmp:
        assert await source.targets[0].poll(snmp)
        first = sink.take()
        values[UPTIME] = ("timeticks", 1000)  # 10 s later
        values["1.3.6.1.2.1.31.1.1.1.6.2"] = ("counter64", 2000 + 10 * 1250)
        values["1.3.6.1.2.1.2.2.1.14.2"] = ("counter", 9)
        agent.set(values)
        assert await source.targets[0].poll(snmp)
        second = sink.take()
    eth0 = (("interface", "eth0"),)
    assert first == {
        ("rtr", "custom:snmp.uptime", ()): 0.0,
        ("rtr", "custom:snmp.if.oper.status", eth0): 1.0,
        ("rtr", "custom:snmp.if.speed", eth0): 1e9,
        ("rtr", "custom:snmp.host.cpu.load", (("cpu", "196608"),)): 15.0,
        ("rtr", "custom:snmp.host.cpu.load", (("cpu", "196609"),)): 35.0,
        ("rtr", "custom:snmp.host.storage.used", (("storage", "Physical memory"),)): 25.0,
    }
    assert second[("rtr", "custom:snmp.uptime", ())] == 10.0
    assert second[("rtr", "custom:snmp.if.in.bytes", eth0)] == 1250.0
    assert second[("rtr", "custom:snmp.if.out.bytes", eth0)] == 0.0
    assert second[("rtr", "custom:snmp.if.in.errors", eth0)] == 7.0
    assert second[("rtr", "custom:snmp.if.out.discards", eth0)] == 0.0
    assert {k[2] for k in second if k[1].startswith("custom:snmp.if.")} == {eth0}
    assert counted(telemetry, "snmp_bad_values", "s", "rtr", "zero_divisor") == 2


async def test_dead_and_slow_targets_never_delay_the_others(snmpd: Start,
                                                            silent_port: int,
                                                            engine: EngineName) -> None:
    fast = snmpd(values={UPTIME: ("timeticks", 1), f"{E}.1.0": ("gauge", 1)})
    slow = snmpd(values={UPTIME: ("timeticks", 1), f"{E}.1.0": ("gauge", 2)}, delay=0.45)
    source, sink, telemetry = make_source(engine, f"""\
sources:
  - type: snmp
    name: s
    community: {COMMUNITY}
    device_type: T
    interval: 150ms
    timeout: 1s
    retries: 0
    scalars:
      - {{metric: custom:t.gauge, oid: {E}.1.0}}
    targets:
      - {{host: "127.0.0.1:{silent_port}", device: dead, timeout: 200ms}}
      - {{host: "{slow.host}", device: slow}}
      - {{host: "{fast.host}", device: fast}}
""")

    def polls(target: str) -> float:
        return counted(telemetry, "polls", "s", target)

    task = asyncio.create_task(source.run())
    try:
        await wait_for(lambda: polls("fast") >= 20, timeout=30, what="20 polls of fast")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert set(sink.devices) == {"dead", "slow", "fast"}
    by_device: dict[str, int] = {}
    for reading in sink.readings:
        by_device[reading.device] = by_device.get(reading.device, 0) + 1
    # The fast target polled on every tick: a reading each time, never a skip.
    assert by_device["fast"] >= 20
    assert counted(telemetry, "polls_skipped", "s", "fast") == 0
    # The slow one answered, more slowly than its interval: polls skipped, not stacked.
    assert 1 <= by_device["slow"] <= by_device["fast"] // 2
    assert counted(telemetry, "polls_skipped", "s", "slow") >= 5
    # The dead one timed out and backed off.
    assert "dead" not in by_device
    assert counted(telemetry, "snmp_errors", "s", "dead", "timeout") == polls("dead") >= 1
    assert polls("dead") <= polls("fast") // 2


async def test_a_wrong_v3_key_is_one_clear_error_and_others_carry_on(snmpd: Start,
                                                                     engine: EngineName) -> None:
    good = snmpd(ports=2, values={UPTIME: ("timeticks", 1), f"{E}.1.0": ("gauge", 7)})
    # The same user on this device has another key than the collector is configured with.
    other = snmpd(values={UPTIME: ("timeticks", 1)}, auth_key="rotated-auth-key")
    source, sink, telemetry = make_source(engine, f"""\
sources:
  - type: snmp
    name: s
    version: v3
    v3: {{user: {V3_USER}, auth_protocol: SHA-256, auth_key: {AUTH_KEY},
          priv_protocol: AES, priv_key: {PRIV_KEY}}}
    device_type: T
    interval: 100ms
    timeout: 500ms
    retries: 0
    scalars:
      - {{metric: custom:t.gauge, oid: {E}.1.0}}
    targets:
      - {{host: "{good.hosts[0]}", device: good-1}}
      - {{host: "{other.host}", device: misconfigured}}
      - {{host: "{good.hosts[1]}", device: good-2}}
""")
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(source.run())
        try:
            await wait_for(lambda: counted(telemetry, "snmp_errors", "s", "misconfigured",
                                           "auth") >= 3, timeout=30, what="3 auth failures")
            await wait_for(lambda: counted(telemetry, "polls", "s", "good-2") >= 10,
                           timeout=30, what="10 polls of good-2")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    errors = [e for e in logs if e["log_level"] == "error"]
    assert len(errors) == 1, errors
    assert errors[0]["target"] == "misconfigured" and errors[0]["reason"] == "auth"
    assert "auth_key" in errors[0]["error"]
    assert not any(AUTH_KEY in str(e) or PRIV_KEY in str(e) for e in logs)
    good_readings = [r for r in sink.readings if r.device.startswith("good-")]
    assert {r.device for r in good_readings} == {"good-1", "good-2"}
    assert all(r.value == 7 for r in good_readings)
    assert counted(telemetry, "polls_failed", "s", "good-1") == 0


async def test_recovery_is_logged_once_and_secrets_never(snmpd: Start,
                                                         silent_port: int,
                                                         engine: EngineName) -> None:
    agent = snmpd(values={UPTIME: ("timeticks", 1), f"{E}.1.0": ("gauge", 1)})
    source, _, _ = make_source(engine, f"""\
sources:
  - type: snmp
    name: s
    community: {COMMUNITY}
    device_type: T
    timeout: 200ms
    retries: 0
    scalars:
      - {{metric: custom:t.gauge, oid: {E}.1.0}}
    targets:
      - {{host: "127.0.0.1:{silent_port}", device: flaky}}
""")
    target = source.targets[0]
    logs: list[EventDict]
    with structlog.testing.capture_logs() as logs:
        async with open_engine(engine) as snmp:
            assert not await target.poll(snmp)
            assert not await target.poll(snmp)
            # The device comes back at another address (as after a failover).
            target.agent = dataclasses.replace(target.agent, port=agent.ports[0])
            assert await target.poll(snmp)
            assert await target.poll(snmp)
    assert [(e["log_level"], e["event"]) for e in logs] == [
        ("error", "SNMP target failing"), ("info", "SNMP target recovered")]
    assert COMMUNITY not in str(logs)


@pytest.mark.parametrize("version", ["v1", "v2c"])
async def test_v1_and_v2c_targets(snmpd: Start, version: str, engine: EngineName) -> None:
    agent = snmpd(values={UPTIME: ("timeticks", 1), f"{E}.1.0": ("gauge", 3)})
    source, sink, _ = make_source(engine, f"""\
sources:
  - type: snmp
    name: s
    version: {version}
    community: {COMMUNITY}
    device_type: T
    scalars:
      - {{metric: custom:t.gauge, oid: {E}.1.0}}
    targets:
      - {{host: "{agent.host}", device: d}}
""")
    async with open_engine(engine) as snmp:
        assert await source.targets[0].poll(snmp)
    assert sink.take() == {("d", "custom:t.gauge", ()): 3.0}
