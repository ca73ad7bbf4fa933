"""The health endpoint over real HTTP on 127.0.0.1: /healthz, /readyz, /metrics, /status."""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from collector.health import PROMETHEUS_CONTENT_TYPE, HealthServer, parse_listen
from collector.telemetry import Telemetry
from tests.helpers import free_port


@dataclass
class FakeProvider:
    """What the daemon implements, with answers the test sets."""

    telemetry: Telemetry = field(default_factory=Telemetry)
    ready: bool = True
    reason: str = "metrics registered, last flush ok"
    state: dict[str, Any] = field(default_factory=dict)
    fail: bool = False

    def readiness(self) -> tuple[bool, str]:
        if self.fail:
            raise RuntimeError("provider broke")
        return self.ready, self.reason

    def status(self) -> dict[str, Any]:
        return self.state


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider()


@pytest.fixture
async def server(provider: FakeProvider) -> AsyncIterator[HealthServer]:
    health = HealthServer(f"127.0.0.1:{free_port()}", provider)
    await health.start()
    try:
        yield health
    finally:
        await health.stop()


async def get(url: str) -> tuple[int, str, str]:
    """(status, content type header, body) of a GET."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(url) as response,
    ):
        return response.status, response.headers["Content-Type"], await response.text()


async def test_url_names_the_bound_address(provider: FakeProvider) -> None:
    port = free_port()
    health = HealthServer(f"127.0.0.1:{port}", provider)
    assert health.url is None
    await health.start()
    try:
        assert health.url == f"http://127.0.0.1:{port}"
    finally:
        await health.stop()
    assert health.url is None


async def test_port_zero_reports_the_real_port(provider: FakeProvider) -> None:
    health = HealthServer("127.0.0.1:0", provider)
    await health.start()
    try:
        assert health.url is not None
        port = int(health.url.rsplit(":", 1)[1])
        assert port > 0
        status, _, _ = await get(f"{health.url}/healthz")
        assert status == 200
    finally:
        await health.stop()


async def test_healthz_ok_while_the_loop_beats(server: HealthServer) -> None:
    status, content_type, body = await get(f"{server.url}/healthz")
    assert status == 200
    assert content_type.startswith("text/plain")
    assert body == "ok\n"


async def test_healthz_503_when_the_heartbeat_is_late(provider: FakeProvider) -> None:
    clock = FakeClock()
    # A heartbeat interval of an hour: after the first beat, only the fake clock moves.
    health = HealthServer(
        f"127.0.0.1:{free_port()}",
        provider,
        stall_after=5.0,
        heartbeat_interval=3600.0,
        clock=clock,
    )
    await health.start()
    try:
        assert (await get(f"{health.url}/healthz"))[0] == 200
        clock.now += 4.0
        assert (await get(f"{health.url}/healthz"))[0] == 200
        clock.now += 2.0
        status, _, body = await get(f"{health.url}/healthz")
        assert status == 503
        assert "stalled for 6.0s" in body
    finally:
        await health.stop()


async def test_readyz_follows_the_provider(server: HealthServer, provider: FakeProvider) -> None:
    status, _, body = await get(f"{server.url}/readyz")
    assert (status, body) == (200, "ready: metrics registered, last flush ok\n")
    provider.ready, provider.reason = False, "last flush failed, oldest point 35m old"
    status, _, body = await get(f"{server.url}/readyz")
    assert (status, body) == (503, "not ready: last flush failed, oldest point 35m old\n")


async def test_readyz_503_when_the_provider_raises(
    server: HealthServer, provider: FakeProvider
) -> None:
    provider.fail = True
    status, _, body = await get(f"{server.url}/readyz")
    assert status == 503
    assert "provider broke" not in body


# The Prometheus text format, version 0.0.4: comments and samples.
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_HELP = re.compile(rf"# HELP ({_NAME}) (.*)")
_TYPE = re.compile(rf"# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)")
_LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
_SAMPLE = re.compile(
    rf"({_NAME})(?:\{{({_LABEL}(?:,{_LABEL})*)?\}})? "
    r"([+-]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|Inf|NaN))"
)


def _unescape(match: re.Match[str]) -> str:
    return "\n" if match[1] == "n" else match[1]


def parse_prometheus(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples by (name, labels); fails on any line that is not valid exposition text."""
    assert text.endswith("\n")
    typed: dict[str, str] = {}
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        if match := _HELP.fullmatch(line):
            continue
        if match := _TYPE.fullmatch(line):
            assert match[1] not in typed, f"TYPE given twice for {match[1]}"
            typed[match[1]] = match[2]
            continue
        match = _SAMPLE.fullmatch(line)
        assert match is not None, f"not a Prometheus sample line: {line!r}"
        name = match[1]
        assert name in typed, f"sample {name} before its TYPE line"
        labels = tuple(
            (key, re.sub(r"\\(.)", _unescape, value))
            for key, value in re.findall(_LABEL, match[2] or "")
        )
        samples[(name, labels)] = float(match[len(match.groups())])
    return samples


async def test_metrics_serves_the_registry_as_prometheus_text(
    server: HealthServer, provider: FakeProvider
) -> None:
    readings = provider.telemetry.counter(
        "readings_received", "Readings received per source", ("source",)
    )
    readings.labels("mqtt-sensors").inc(41)
    readings.labels("snmp \"core\"\nswitch").inc(2)
    buffered = provider.telemetry.gauge("points_buffered", "Points waiting for a flush")
    buffered.gauge().callback = lambda: 12.5
    provider.telemetry.counter("reconnects", "MQTT reconnects")  # no children yet

    status, content_type, body = await get(f"{server.url}/metrics")
    assert status == 200
    assert content_type == PROMETHEUS_CONTENT_TYPE
    samples = parse_prometheus(body)
    assert samples == {
        ("dtcollector_readings_received_total", (("source", "mqtt-sensors"),)): 41.0,
        ("dtcollector_readings_received_total", (("source", 'snmp "core"\nswitch'),)): 2.0,
        ("dtcollector_points_buffered", ()): 12.5,
    }
    assert "# TYPE dtcollector_reconnects_total counter\n" in body

    # Each scrape renders the registry as it is now.
    readings.labels("mqtt-sensors").inc()
    samples = parse_prometheus((await get(f"{server.url}/metrics"))[2])
    assert samples[("dtcollector_readings_received_total", (("source", "mqtt-sensors"),))] == 42


def test_the_prometheus_parser_rejects_bad_lines() -> None:
    with pytest.raises(AssertionError):
        parse_prometheus("# TYPE x_total counter\nx_total{a=b} 1\n")
    with pytest.raises(AssertionError):
        parse_prometheus("y 1\n")  # no TYPE line
    assert parse_prometheus('# TYPE x counter\nx{a="1",b="\\""} 2\n') == {
        ("x", (("a", "1"), ("b", '"'))): 2.0
    }


async def test_status_serves_the_providers_json(
    server: HealthServer, provider: FakeProvider
) -> None:
    provider.state = {
        "devices": {
            "switch-1": {
                "points_buffered": 3,
                "last_push": "2026-11-28T10:00:00Z",
                "entity_id": "CUSTOM_DEVICE-0123456789ABCDEF",
                "last_error": None,
            }
        }
    }
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(f"{server.url}/status") as response,
    ):
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.json() == provider.state


async def test_unknown_paths_are_404(server: HealthServer) -> None:
    assert (await get(f"{server.url}/nope"))[0] == 404


async def test_off_when_listen_is_empty(provider: FakeProvider) -> None:
    health = HealthServer("", provider)
    await health.start()
    assert health.url is None
    await health.stop()


async def test_stop_is_safe_without_start_and_twice(provider: FakeProvider) -> None:
    health = HealthServer(f"127.0.0.1:{free_port()}", provider)
    await health.stop()
    await health.start()
    url = health.url
    await health.stop()
    await health.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(f"{url}/healthz")


async def test_a_taken_port_raises_oserror(provider: FakeProvider) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        health = HealthServer(f"127.0.0.1:{port}", provider)
        with pytest.raises(OSError, match=r"(?i)address already in use"):
            await health.start()
        assert health.url is None
        await health.stop()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_ipv6_listen(provider: FakeProvider) -> None:
    health = HealthServer("[::1]:0", provider)
    await health.start()
    try:
        assert health.url is not None
        assert health.url.startswith("http://[::1]:")
        assert (await get(f"{health.url}/healthz"))[0] == 200
    finally:
        await health.stop()


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::1]:9464", ("::1", 9464)),
        ("[::]:80", ("::", 80)),
        ("0.0.0.0:9464", ("0.0.0.0", 9464)),
        ("localhost:0", ("localhost", 0)),
        ("", None),
        ("  ", None),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int] | None) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize(
    "listen",
    ["9464", ":9464", "::1:9464", "[::1:9464", "[nope]:9464", "host:http", "host:65536", "h:-1"],
)
def test_parse_listen_rejects(listen: str) -> None:
    with pytest.raises(ValueError, match="listen address"):
        parse_listen(listen)
