"""MQTT through the whole collector: mosquitto -> MQTT source -> buffer -> flush -> simulator.

Each test publishes with a real client (or mosquitto_pub) and compares what the Dynatrace
simulator accepted with what was published: device, metric, dimensions, timestamp, value.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections import Counter
from collections.abc import Iterable
from contextlib import AsyncExitStack

import pytest

from collector.config import parse_config
from collector.daemon import Daemon
from collector.simulator import AcceptedPoint, Simulator
from tests.helpers import base_config, running_daemon, wait_for
from tests.mosquitto import (
    IOT_METRICS,
    Broker,
    BrokerFactory,
    Gate,
    mosquitto_pub,
    publish,
)

TEMP, HUM, DOOR = "custom:iot.temperature", "custom:iot.humidity", "custom:iot.door.open"

def source_yaml(url: str, root: str, *, name: str = "iot", client_id: str | None = None,
                protocol: str = "5", share_group: str | None = None) -> str:
    """One MQTT source: JSON sensors on {root}/{site}/{device}/state, numbers on .../door."""
    share = f"\n              share_group: {share_group}" if share_group else ""
    return textwrap.dedent(f"""\
        - type: mqtt
          name: {name}
          url: {url}
          protocol: "{protocol}"
          client_id: {client_id or root + "-" + name}
          reconnect_delay: 50ms
          reconnect_max_delay: 200ms
          subscriptions:
            - topic: {root}/{{site}}/{{device}}/state{share}
              device: {{type: Sensor, display_name: "{{device}} at {{site}}"}}
              dimensions: {{site: "{{site}}"}}
              timestamp: {{field: time, format: ms}}
              metrics:
                - {{field: temperature, metric: {TEMP}}}
                - {{field: humidity, metric: {HUM}, scale: 0.1}}
            - topic: {root}/{{site}}/{{device}}/door{share}
              payload: number
              device: {{type: Sensor, display_name: "{{device}} at {{site}}"}}
              metrics:
                - {{metric: {DOOR}, dimensions: {{site: "{{site}}"}}}}
        """)


def collector_config(simulator: Simulator, *sources: str) -> str:
    return (base_config(simulator.url) + IOT_METRICS + "sources:\n"
            + "".join(textwrap.indent(s, "  ") for s in sources))


def count(daemon: Daemon, family: str, *labels: str) -> float:
    found = daemon.telemetry.families.get(family)
    return 0.0 if found is None else found.value(*labels)


async def connected(daemon: Daemon, source: str = "iot") -> None:
    await wait_for(lambda: count(daemon, "mqtt_connected", source) == 1, what=f"{source} connected")


async def timestamps(n: int) -> list[int]:
    """`n` distinct epoch ms timestamps, all already in the past (Dynatrace takes no future
    points) and after the metrics were registered (nor any from before that)."""
    first = int(time.time() * 1000) + 1
    await wait_for(lambda: time.time() * 1000 > first + n, what="the clock to pass them")
    return [first + i for i in range(n)]


SensorReading = tuple[str, str, int, float, int]
"""site, device, timestamp (ms), temperature, humidity (per mille)"""


def sensor_message(root: str, reading: SensorReading) -> tuple[str, str]:
    site, device, ts, temp, hum = reading
    return (f"{root}/{site}/{device}/state",
            json.dumps({"time": ts, "temperature": temp, "humidity": hum}))


def sensor_points(reading: SensorReading) -> list[AcceptedPoint]:
    site, device, ts, temp, hum = reading
    dims = (("site", site),)
    return [AcceptedPoint(device, TEMP, dims, ts, float(temp)),
            AcceptedPoint(device, HUM, dims, ts, hum * 0.1)]


def multiset(points: Iterable[AcceptedPoint]) -> Counter[AcceptedPoint]:
    return Counter(points)


def no_losses(daemon: Daemon) -> dict[str, object]:
    """What the buffer dropped or found invalid: empty in a clean run."""
    dropped: dict[str, object] = {reason: n for reason, n in daemon.buffer.dropped.items() if n}
    return {**dropped, **daemon.buffer.invalid_causes}


async def test_published_points_arrive_exactly(
        mosquitto: Broker, simulator: Simulator, topic_root: str) -> None:
    text = collector_config(simulator, source_yaml(mosquitto.url, topic_root))
    async with running_daemon(parse_config(text, env={})) as daemon:
        await connected(daemon)
        stamps = await timestamps(40)
        readings: list[SensorReading] = [
            ("linz", f"s{i % 4}", ts, 20 + i / 4, 400 + i) for i, ts in enumerate(stamps)]
        # One mosquitto_pub per sensor topic: each line is one message.
        for site, device in {(s, d) for s, d, *_ in readings}:
            await mosquitto_pub(mosquitto.port, f"{topic_root}/{site}/{device}/state",
                                [sensor_message(topic_root, r)[1] for r in readings
                                 if r[:2] == (site, device)])
        before = int(time.time() * 1000)
        await publish(mosquitto.url, [(f"{topic_root}/wien/door-{i}/door", str(i % 2))
                                      for i in range(5)])
        expected = [p for r in readings for p in sensor_points(r)]
        await wait_for(lambda: len(simulator.points()) >= len(expected) + 5, what="all points")
        after = int(time.time() * 1000)
        await daemon.flush_now()
    points = simulator.points()
    doors = [p for p in points if p.metric == DOOR]
    assert multiset(p for p in points if p.metric != DOOR) == multiset(expected)
    # Plain numbers carry no time: they are stamped when received.
    assert sorted((p.device, p.dimensions, p.value) for p in doors) == [
        (f"door-{i}", (("site", "wien"),), float(i % 2)) for i in range(5)]
    assert all(before <= p.timestamp_ms <= after for p in doors)
    assert no_losses(daemon) == {}
    assert simulator.devices["s1"].display_name == "s1 at linz"


@pytest.mark.parametrize(("outage", "protocol"), [
    ("broker killed", "3.1.1"), ("broker killed", "5"), ("network cut", "5")])
async def test_nothing_published_during_an_outage_is_lost(
        mosquitto_factory: BrokerFactory, simulator: Simulator, topic_root: str,
        outage: str, protocol: str) -> None:
    broker = await mosquitto_factory(persistence=True)
    # The collector reaches the broker only through the gate; the test publishes directly.
    # With the gate shut, the broker is up but the collector is provably away.
    gate = Gate(broker.port)
    await gate.open()
    text = collector_config(simulator, source_yaml(gate.url, topic_root, protocol=protocol))
    try:
        async with running_daemon(parse_config(text, env={})) as daemon:
            await connected(daemon)
            stamps = await timestamps(90)
            readings: list[SensorReading] = [
                ("linz", f"s{i % 3}", ts, i, i) for i, ts in enumerate(stamps)]
            before, during, after = readings[:30], readings[30:60], readings[60:]

            await publish(broker.url, [sensor_message(topic_root, r) for r in before])
            await wait_for(lambda: len(simulator.points()) == 2 * len(before),
                           what="the points published before the outage")

            await gate.cut()
            if outage == "broker killed":
                await broker.stop(kill=True)
            await wait_for(lambda: count(daemon, "mqtt_connected", "iot") == 0,
                           what="the collector to notice")
            if outage == "broker killed":
                await broker.start()
            await publish(broker.url, [sensor_message(topic_root, r) for r in during])
            failed_attempts = count(daemon, "mqtt_reconnects", "iot")
            await wait_for(lambda: count(daemon, "mqtt_reconnects", "iot") > failed_attempts + 2,
                           what="more failed attempts while the gate is shut")
            assert count(daemon, "mqtt_connected", "iot") == 0

            await gate.open()
            await connected(daemon)
            await publish(broker.url, [sensor_message(topic_root, r) for r in after])
            await wait_for(lambda: len(simulator.points()) >= 2 * len(readings),
                           what="every point", timeout=20)
            await daemon.flush_now()
    finally:
        await gate.cut()
    expected = [p for r in readings for p in sensor_points(r)]
    assert multiset(simulator.points()) == multiset(expected)
    assert no_losses(daemon) == {}


async def test_two_collectors_on_a_shared_subscription_process_each_message_once(
        mosquitto: Broker, simulator: Simulator, topic_root: str) -> None:
    configs = [parse_config(collector_config(simulator, source_yaml(
        mosquitto.url, topic_root, client_id=f"{topic_root}-{n}", share_group="collectors")),
        env={}) for n in (1, 2)]
    async with AsyncExitStack() as stack:
        daemons = [await stack.enter_async_context(running_daemon(c)) for c in configs]
        for daemon in daemons:
            await connected(daemon)
        stamps = await timestamps(200)
        readings: list[SensorReading] = [
            ("graz", f"s{i % 5}", ts, i, 2 * i) for i, ts in enumerate(stamps)]
        await publish(mosquitto.url, [sensor_message(topic_root, r) for r in readings])
        await wait_for(lambda: sum(count(d, "mqtt_messages", "iot") for d in daemons) >= 200,
                       what="all messages received")
        for daemon in daemons:
            await daemon.flush_now()
        await wait_for(lambda: len(simulator.points()) >= 400, what="all points")
        shares = [count(d, "mqtt_messages", "iot") for d in daemons]
    expected = [p for r in readings for p in sensor_points(r)]
    assert multiset(simulator.points()) == multiset(expected)
    assert sum(shares) == 200
    assert all(share > 0 for share in shares), f"one collector got nothing: {shares}"


async def test_a_flood_of_malformed_payloads_does_not_stop_the_good_ones(
        mosquitto: Broker, simulator: Simulator, topic_root: str) -> None:
    text = collector_config(simulator, source_yaml(mosquitto.url, topic_root))
    async with running_daemon(parse_config(text, env={})) as daemon:
        await connected(daemon)
        stamps = await timestamps(300)
        good: list[SensorReading] = [("linz", f"s{i % 7}", ts, i, i) for i, ts in enumerate(stamps)]
        state, door = f"{topic_root}/linz/bad/state", f"{topic_root}/linz/bad/door"
        bad: list[tuple[str, str | bytes]] = [
               (state, "{"), (state, '{"time": 1, "temperature": "warm", "humidity": 1}'),
               (state, '{"temperature": 1, "humidity": 1}'), (door, "open"), (door, "inf"),
               (state, b"\x00\xff" * 40_000)]  # 80 kB, over the 64 KiB default limit
        messages: list[tuple[str, str | bytes]] = []
        for i, reading in enumerate(good):
            messages.append(sensor_message(topic_root, reading))
            messages += bad * (3 if i % 10 == 0 else 1)
        await publish(mosquitto.url, messages)
        await wait_for(lambda: count(daemon, "mqtt_messages", "iot") == len(messages),
                       what="every message")
        await wait_for(lambda: len(simulator.points()) >= 2 * len(good), what="the good points")
        await daemon.flush_now()
        assert count(daemon, "mqtt_connected", "iot") == 1
        assert count(daemon, "mqtt_reconnects", "iot") == 0
    n = len(good) + 2 * (len(good) // 10)  # each bad payload's number of copies
    assert daemon.telemetry.families["mqtt_bad_input"].by_label() == {
        ("iot", "not_json"): n, ("iot", "not_a_number"): 2 * n, ("iot", "missing_field"): n,
        ("iot", "not_finite"): n, ("iot", "too_large"): n}
    # "warm" is bad but its humidity is fine: one humidity point per copy, at time 1 ms,
    # which the buffer counts as invalid (before the metric's registration), never sends.
    assert multiset(simulator.points()) == multiset(p for r in good for p in sensor_points(r))


async def test_a_stuck_flush_does_not_stall_the_mqtt_client(
        mosquitto: Broker, simulator: Simulator, topic_root: str) -> None:
    text = collector_config(simulator, source_yaml(mosquitto.url, topic_root))
    text = text.replace("  timeout: 2s\n", "  timeout: 30s\n", 1)  # let the push hang
    async with running_daemon(parse_config(text, env={})) as daemon:
        await connected(daemon)
        stamps = await timestamps(201)
        readings: list[SensorReading] = [
            ("linz", f"s{i % 3}", ts, i, i) for i, ts in enumerate(stamps)]
        simulator.slow(8.0, path_contains="/entity/")
        await publish(mosquitto.url, [sensor_message(topic_root, readings[0])])
        await wait_for(lambda: daemon.buffer.in_flight > 0, what="a push to hang")
        await publish(mosquitto.url, [sensor_message(topic_root, r) for r in readings[1:]])
        await wait_for(lambda: daemon.buffer.received == 2 * len(readings), timeout=5,
                       what="every reading in the buffer while the push hangs")
        assert daemon.buffer.in_flight > 0 and simulator.points() == []
        simulator.clear_faults()
        await wait_for(lambda: len(simulator.points()) >= 2 * len(readings), timeout=20,
                       what="every point")
        await daemon.flush_now()
    assert multiset(simulator.points()) == multiset(p for r in readings for p in sensor_points(r))
