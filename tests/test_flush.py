"""Every flush outcome against the simulator over real HTTP."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from collector.config import parse_config
from collector.daemon import Daemon
from collector.model import Device, Reading
from collector.simulator import AcceptedPoint, Simulator
from tests.helpers import TOKEN, base_config, running_daemon, wait_for

METRICS = """\
metrics:
  custom:fw.dropped:
    display_name: Dropped
    dimensions: [nic]
    types: [F5-Firewall]
  custom:fw.sessions:
    display_name: Sessions
    types: [F5-Firewall]
devices:
  fw-1:
    display_name: Firewall one
    type: F5-Firewall
    group: firewalls
    ip_addresses: [10.0.0.1]
    tags: [lab]
    properties: {vendor: F5}
  fw/2:
    type: F5-Firewall
"""


def config_text(sim: Simulator, extra_dynatrace: str = "", extra_buffer: str = "") -> str:
    text = base_config(sim.url, flush_interval="60s", extra_buffer=extra_buffer)
    if extra_dynatrace:
        text = text.replace("  timeout: 2s\n", "  timeout: 2s\n" + extra_dynatrace)
    return text + METRICS


def now_ms() -> int:
    return int(time.time() * 1000)


async def emit_points(daemon: Daemon, n: int, device: str = "fw-1", nics: int = 3,
                      start_value: float = 0.0) -> list[AcceptedPoint]:
    """Emit n points round-robin over `nics` series plus one sessions point; the expected.

    Timestamps are 1 ms apart and end now; we first wait so that none is older than the
    metrics' registration (Dynatrace rejects those).
    """
    await asyncio.sleep(n / 1000 + 0.01)
    expected = []
    ts = now_ms() - n
    for i in range(n):
        nic = f"eth{i % nics}"
        value = start_value + i
        daemon.buffer.emit(Reading(device, "custom:fw.dropped", (("nic", nic),), ts + i, value))
        expected.append(AcceptedPoint(device, "custom:fw.dropped", (("nic", nic),), ts + i, value))
    daemon.buffer.emit(Reading(device, "custom:fw.sessions", (), ts, 42.0))
    expected.append(AcceptedPoint(device, "custom:fw.sessions", (), ts, 42.0))
    return expected


def key(p: AcceptedPoint) -> tuple[str, str, tuple[tuple[str, str], ...], int, float]:
    return (p.device, p.metric, p.dimensions, p.timestamp_ms, p.value)


def same_points(got: list[AcceptedPoint], expected: list[AcceptedPoint]) -> bool:
    return sorted(map(key, got)) == sorted(map(key, expected))


def balanced(daemon: Daemon) -> bool:
    b = daemon.buffer
    return b.received == b.delivered + sum(b.dropped.values()) + b.buffered + b.in_flight


async def test_points_arrive_exactly_once_with_metadata_on_first_push(
        simulator: Simulator) -> None:
    async with running_daemon(parse_config(config_text(simulator), env={})) as daemon:
        assert set(simulator.metrics) == {"custom:fw.dropped", "custom:fw.sessions"}
        expected = await emit_points(daemon, 10)
        expected += await emit_points(daemon, 4, device="fw/2", nics=1, start_value=100)
        await daemon.flush_now()
        assert same_points(simulator.points(), expected)
        first = {p.device: p.body for p in simulator.pushes}
        assert first["fw-1"]["displayName"] == "Firewall one"
        assert first["fw-1"]["type"] == "F5-Firewall"
        assert first["fw-1"]["group"] == "firewalls"
        assert first["fw-1"]["ipAddresses"] == ["10.0.0.1"]
        assert first["fw-1"]["properties"] == {"vendor": "F5"}

        # Second push: no metadata; a device without points sends nothing.
        pushes_before = len(simulator.pushes)
        more = await emit_points(daemon, 2, start_value=200)
        await daemon.flush_now()
        new = simulator.pushes[pushes_before:]
        assert [p.device for p in new] == ["fw-1"]
        assert set(new[0].body) == {"series"}
        assert same_points(simulator.points(), expected + more)

        # A device a source discovered: its changed metadata goes with the next push, once.
        daemon.buffer.declare_device(Device("dyn-1", "F5-Firewall", display_name="First"))
        await emit_points(daemon, 1, device="dyn-1", start_value=300)
        await daemon.flush_now()
        assert simulator.pushes[-1].body["displayName"] == "First"
        daemon.buffer.declare_device(Device("dyn-1", "F5-Firewall", display_name="Renamed"))
        await emit_points(daemon, 1, device="dyn-1", start_value=400)
        await daemon.flush_now()
        assert simulator.pushes[-1].body["displayName"] == "Renamed"
        await emit_points(daemon, 1, device="dyn-1", start_value=500)
        await daemon.flush_now()
        assert "displayName" not in simulator.pushes[-1].body
        assert daemon.flusher is not None
        state = daemon.flusher.devices["fw-1"]
        assert state.entity_id is not None and state.entity_id.startswith("CUSTOM_DEVICE-")
    assert simulator.responses.keys() <= {200, 201}
    assert daemon.buffer.dropped == {"expired": 0, "overflow": 0, "rejected": 0, "invalid": 0}
    assert balanced(daemon) and daemon.buffer.buffered == 0


async def test_bodies_are_split_at_max_request_bytes(simulator: Simulator) -> None:
    text = config_text(simulator, extra_dynatrace="  max_request_bytes: 2048\n")
    async with running_daemon(parse_config(text, env={})) as daemon:
        expected = await emit_points(daemon, 600, nics=2)
        await daemon.flush_now()
    pushes = [r for r in simulator.requests if r.method == "POST"]
    assert len(pushes) > 5
    assert all(r.body_bytes <= 2048 for r in pushes)
    assert simulator.responses[413] == 0
    assert same_points(simulator.points(), expected)


async def test_413_splits_further_and_retries() -> None:
    sim = Simulator(tokens={TOKEN}, max_body_bytes=3000)
    await sim.start("127.0.0.1", 0)
    try:
        async with running_daemon(parse_config(config_text(sim), env={})) as daemon:
            expected = await emit_points(daemon, 500, nics=1)
            await daemon.flush_now()
        assert sim.responses[413] >= 1
        assert same_points(sim.points(), expected)
        assert daemon.buffer.dropped["rejected"] == 0
    finally:
        await sim.stop()


async def test_400_drops_the_named_series_and_delivers_the_rest(simulator: Simulator) -> None:
    async with running_daemon(parse_config(config_text(simulator), env={})) as daemon:
        # Dynatrace's definition changes behind our back: `nic` is no longer declared.
        async with aiohttp.ClientSession() as http:
            answer = await http.put(
                f"{simulator.url}/api/v1/timeseries/custom:fw.dropped",
                json={"displayName": "Dropped", "unit": "Count", "dimensions": [],
                      "types": ["F5-Firewall"]},
                headers={"Authorization": f"Api-Token {TOKEN}"})
            assert answer.status == 200
        expected = await emit_points(daemon, 6, nics=2)
        await daemon.flush_now()
        assert simulator.responses[400] >= 1
        assert same_points(simulator.points(),
                           [p for p in expected if p.metric == "custom:fw.sessions"])
        assert daemon.buffer.dropped["rejected"] == 6
        requests_before = len(simulator.requests)
        await daemon.flush_now()  # rejected points are never retried
        assert len(simulator.requests) == requests_before
        assert balanced(daemon)


async def test_refused_token_keeps_points_until_fixed(simulator: Simulator) -> None:
    async with running_daemon(parse_config(config_text(simulator), env={})) as daemon:
        simulator.fail(401)
        expected = await emit_points(daemon, 5)
        await daemon.flush_now()
        assert daemon.flusher is not None
        assert simulator.responses[401] == 1
        assert daemon.buffer.buffered == len(expected)
        assert "401" in daemon.flusher.last_result
        assert daemon.flusher.devices["fw-1"].last_error is not None
        simulator.clear_faults()
        daemon.flusher.retry_at = 0  # skip the backoff wait
        await daemon.flush_now()
        assert same_points(simulator.points(), expected)
        assert balanced(daemon)


async def test_429_with_retry_after_holds_flushes_then_delivers_once(
        simulator: Simulator) -> None:
    async with running_daemon(parse_config(config_text(simulator), env={})) as daemon:
        assert daemon.flusher is not None
        simulator.fail(429, count=1, retry_after="30")
        expected = await emit_points(daemon, 5)
        await daemon.flush_now()
        assert daemon.flusher.retry_at - time.monotonic() > 25
        requests = len(simulator.requests)
        await daemon.flush_now()  # held: Retry-After has not passed
        assert len(simulator.requests) == requests
        assert daemon.buffer.buffered == len(expected)
        daemon.flusher.retry_at = 0
        await daemon.flush_now()
        assert same_points(simulator.points(), expected)


async def test_429_without_retry_after_waits_5_seconds(simulator: Simulator) -> None:
    async with running_daemon(parse_config(config_text(simulator), env={})) as daemon:
        assert daemon.flusher is not None
        simulator.fail(429, count=1)
        expected = await emit_points(daemon, 3)
        await daemon.flush_now()
        wait = daemon.flusher.retry_at - time.monotonic()
        assert 3 < wait <= 5
        daemon.flusher.retry_at = 0
        await daemon.flush_now()
        assert same_points(simulator.points(), expected)


async def test_503_for_three_intervals_then_every_young_point_arrives_once() -> None:
    # The metrics exist in Dynatrace since a minute ago (so points from before this
    # collector's start are welcome): registration answers 200, not 201.
    offset = [60.0]
    sim = Simulator(tokens={TOKEN}, clock=lambda: time.time() - offset[0])
    await sim.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            for metric, dimensions in (("custom:fw.dropped", ["nic"]), ("custom:fw.sessions", [])):
                answer = await http.put(
                    f"{sim.url}/api/v1/timeseries/{metric}",
                    json={"displayName": metric, "unit": "Count", "dimensions": dimensions,
                          "types": ["F5-Firewall"]},
                    headers={"Authorization": f"Api-Token {TOKEN}"})
                assert answer.status == 201
        offset[0] = 0.0
        text = base_config(sim.url, flush_interval="200ms",
                           extra_buffer="  max_age: 5s\n") + METRICS
        async with running_daemon(parse_config(text, env={})) as daemon:
            sim.fail(503, count=3, path_contains="/custom/")
            ts = now_ms()
            old = [Reading("fw-1", "custom:fw.sessions", (), ts - 4800 + i, float(i))
                   for i in range(5)]
            young = [Reading("fw-1", "custom:fw.dropped", (("nic", "a"),), ts - i, float(i))
                     for i in range(5)]
            for reading in old + young:
                daemon.buffer.emit(reading)
            await wait_for(lambda: len(sim.points()) >= len(young), timeout=20,
                           what="delivery after the outage")
            await wait_for(lambda: daemon.buffer.buffered == 0, what="buffer drained")
        assert sim.responses[503] == 3
        assert same_points(sim.points(), [AcceptedPoint(*r) for r in young])
        assert daemon.buffer.dropped["expired"] == len(old)
        assert daemon.buffer.dropped["invalid"] == 0
        assert balanced(daemon)
    finally:
        await sim.stop()


async def test_dropped_connection_is_retried(simulator: Simulator) -> None:
    async with running_daemon(parse_config(config_text(simulator), env={})) as daemon:
        assert daemon.flusher is not None
        simulator.drop_connections(count=1, path_contains="/custom/")
        expected = await emit_points(daemon, 4)
        await daemon.flush_now()
        assert "connection" in daemon.flusher.last_result
        assert daemon.buffer.buffered == len(expected)
        daemon.flusher.retry_at = 0
        await daemon.flush_now()
        assert same_points(simulator.points(), expected)


async def test_metric_rejected_at_registration_is_disabled(simulator: Simulator) -> None:
    simulator.fail(400, count=1, path_contains="custom:fw.sessions")
    async with running_daemon(parse_config(config_text(simulator), env={})) as daemon:
        assert not daemon.catalog.metrics["custom:fw.sessions"].enabled
        assert daemon.catalog.metrics["custom:fw.dropped"].enabled
        expected = await emit_points(daemon, 3)
        await daemon.flush_now()
        assert same_points(simulator.points(),
                           [p for p in expected if p.metric == "custom:fw.dropped"])
        assert daemon.buffer.invalid_causes == {"metric disabled": 1}


async def test_registration_retries_transient_failures(simulator: Simulator) -> None:
    simulator.fail(503, count=2, path_contains="/timeseries/")
    async with running_daemon(parse_config(config_text(simulator), env={})) as daemon:
        assert all(m.enabled for m in daemon.catalog.metrics.values())
        assert simulator.responses[503] == 2
        assert set(simulator.metrics) == {"custom:fw.dropped", "custom:fw.sessions"}
