"""Running it like production: systemd notify, SIGHUP reload, health, status, self-monitoring."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
from pathlib import Path

import aiohttp

from collector.config import parse_config
from collector.model import Reading
from collector.simulator import Simulator
from tests.helpers import TOKEN, base_config, free_port, running_daemon, wait_for
from tests.test_cli import Running, start
from tests.test_flush import METRICS


def fake_config(url: str, sources: list[tuple[str, str]], extra_metric: str = "",
                flush: str = "60s") -> str:
    """A config with metric custom:fake.value (+ extra) and one fake source per (name, metric)."""
    text = (f"dynatrace:\n  url: {url}\n  token: {TOKEN}\n  timeout: 1s\n"
            f"buffer:\n  flush_interval: {flush}\n  shutdown_timeout: 5s\n"
            "health:\n  listen: ''\n"
            "log:\n  format: json\n  level: debug\n"
            "metrics:\n  custom:fake.value:\n    display_name: Fake\n    types: [Fake]\n")
    if extra_metric:
        text += f"  {extra_metric}:\n    display_name: Extra\n    types: [Fake]\n"
    text += "sources:\n"
    for name, metric in sources:
        text += (f"  - type: fake\n    name: {name}\n    device: dev-{name}\n"
                 f"    device_type: Fake\n    metric: {metric}\n    count: 5\n"
                 "    interval: 0.02\n")
    return text


class NotifyListener:
    """A NOTIFY_SOCKET like systemd's: collects the datagrams the service sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def poll(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def states(self) -> list[str]:
        """READY/RELOADING/STOPPING/WATCHDOG in order, consecutive WATCHDOGs folded."""
        out: list[str] = []
        for message in self.poll():
            for line in message.splitlines():
                name = line.split("=", 1)[0]
                if name in ("READY", "RELOADING", "STOPPING", "WATCHDOG") and not (
                        name == "WATCHDOG" and out and out[-1] == "WATCHDOG"):
                    out.append(name)
        return out


async def test_systemd_notify_ready_watchdog_reload_stopping(
        simulator: Simulator, tmp_path: Path) -> None:
    listener = NotifyListener(tmp_path / "notify.sock")
    config = tmp_path / "config.yaml"
    config.write_text(fake_config(simulator.url, [("a", "custom:fake.value")]))
    running = await start("run", "-c", str(config), env={
        "NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "200000"})
    try:
        await wait_for(lambda: "READY" in listener.states(), timeout=30, what="READY=1")
        await wait_for(lambda: listener.states()[-1:] == ["WATCHDOG"], timeout=10,
                       what="a watchdog ping after READY")
        running.proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: listener.states().count("READY") == 2, timeout=30,
                       what="READY=1 after the reload")
    finally:
        await running.stop(signal.SIGTERM)
    states = [s for s in listener.states() if s != "WATCHDOG"]
    assert states == ["READY", "RELOADING", "READY", "STOPPING"]
    assert any(m.startswith("STATUS=") and "points buffered" in m for m in listener.poll())
    reloading = next(m for m in listener.poll() if m.startswith("RELOADING=1"))
    assert re.search(r"MONOTONIC_USEC=\d+", reloading)


async def emitted(running: Running, name: str, n: int = 5) -> None:
    await wait_for(lambda: f"emitted {n}" in running.stderr
                   and running.stderr.count("emitted ") >= n, timeout=30,
                   what=f"{n} readings from {name}")


async def test_sighup_reload_applies_a_valid_config_and_rejects_an_invalid_one(
        simulator: Simulator, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(fake_config(simulator.url, [("a", "custom:fake.value")]))
    running = await start("run", "-c", str(config))
    try:
        await wait_for(lambda: running.stderr.count("emitted ") == 5, timeout=30,
                       what="source a's 5 readings")
        # Add a source with a metric that is new: it must be registered before use.
        config.write_text(fake_config(simulator.url, [("a", "custom:fake.value"),
                                                      ("b", "custom:fake.extra")],
                                      extra_metric="custom:fake.extra"))
        running.proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: running.stderr.count("emitted ") == 10, timeout=30,
                       what="source b's readings after the reload")
        assert "custom:fake.extra" in simulator.metrics
        assert simulator.points() == []  # flush_interval 60 s: everything is still buffered

        config.write_text("dynatrace: {url: not-a-url}\n")
        running.proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: "reload rejected" in running.stderr, timeout=30,
                       what="the invalid config rejected")
        assert running.proc.returncode is None
    finally:
        assert await running.stop(signal.SIGTERM) == 0
    # Source a was unchanged, so it kept running (not restarted: 5 readings, not 10);
    # the buffered points survived both reloads and went out in the final flush.
    by_device: dict[str, list[float]] = {}
    for point in simulator.points():
        by_device.setdefault(point.device, []).append(point.value)
    assert by_device == {"dev-a": [0.0, 1.0, 2.0, 3.0, 4.0], "dev-b": [0.0, 1.0, 2.0, 3.0, 4.0]}
    rejected = [json.loads(line) for line in running.stderr.splitlines()
                if "reload rejected" in line]
    assert any("dynatrace.url" in error for error in rejected[0]["errors"])




def prometheus(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


async def test_health_metrics_and_status_with_drops_of_every_reason(
        simulator: Simulator) -> None:
    port = free_port()
    text = (base_config(simulator.url, flush_interval="60s",
                        extra_buffer="  max_points: 3\n  max_age: 30s\n")
            .replace("  listen: ''", f"  listen: 127.0.0.1:{port}") + METRICS)
    async with running_daemon(parse_config(text, env={})) as daemon, \
            aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{port}"
        await asyncio.sleep(0.01)  # points must be younger than the metrics' registration
        now = int(daemon.clock() * 1000)
        emit = daemon.buffer.emit
        emit(Reading("fw-1", "custom:fw.sessions", (), now, float("nan")))  # invalid
        emit(Reading("fw-1", "custom:fw.sessions", (), now, 1.0))  # expires: 31 s later...
        daemon.buffer.clock = lambda: (now + 31_000) / 1000
        assert daemon.buffer.expire() == 1
        daemon.buffer.clock = daemon.clock
        for i in range(4):  # one overflow
            emit(Reading("fw-1", "custom:fw.sessions", (), now - i, float(i)))
        async with http.put(f"{simulator.url}/api/v1/timeseries/custom:fw.dropped",
                            json={"displayName": "D", "dimensions": [], "types": ["F5-Firewall"]},
                            headers={"Authorization": f"Api-Token {TOKEN}"}) as answer:
            assert answer.status == 200
        await daemon.flush_now()  # sessions delivered
        emit(Reading("fw-1", "custom:fw.dropped", (("nic", "a"),), now, 5.0))
        await daemon.flush_now()  # rejected: nic is no longer declared at Dynatrace
        simulator.fail(503)
        emit(Reading("fw-1", "custom:fw.sessions", (), now, 9.0))
        await daemon.flush_now()  # stays buffered

        async with http.get(f"{base}/metrics") as answer:
            assert answer.status == 200
            assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            m = prometheus(await answer.text())
        dropped = {r: m[f'dtcollector_points_dropped_total{{reason="{r}"}}']
                   for r in ("invalid", "expired", "overflow", "rejected")}
        assert dropped == {"invalid": 1, "expired": 1, "overflow": 1, "rejected": 1}
        assert m["dtcollector_points_delivered_total"] == 3
        assert m["dtcollector_points_buffered"] == 1
        assert m["dtcollector_points_received_total"] == (
            m["dtcollector_points_delivered_total"] + sum(dropped.values())
            + m["dtcollector_points_buffered"])
        assert m['dtcollector_dynatrace_requests_total{endpoint="push",status="503"}'] == 1

        async with http.get(f"{base}/status") as answer:
            status = await answer.json()
        assert status["devices"]["fw-1"]["points_buffered"] == 1
        assert status["devices"]["fw-1"]["entity_id"].startswith("CUSTOM_DEVICE-")
        assert "503" in status["devices"]["fw-1"]["last_error"]
        async with http.get(f"{base}/healthz") as answer:
            assert answer.status == 200
        async with http.get(f"{base}/readyz") as answer:
            # The last flush failed, but nothing is older than half of max_age yet.
            assert answer.status == 200
        daemon.clock = daemon.buffer.clock = lambda: (now + 20_000) / 1000
        async with http.get(f"{base}/readyz") as answer:
            assert answer.status == 503
            assert "oldest buffered point is 20s old" in await answer.text()


async def test_self_monitoring_reports_its_own_counters(simulator: Simulator) -> None:
    text = (base_config(simulator.url, flush_interval="100ms") + METRICS
            + "self_monitoring:\n  enabled: true\n  device_id: collector-1\n  interval: 100ms\n")
    async with running_daemon(parse_config(text, env={})) as daemon:
        assert "custom:dtcollector.points.received" in simulator.metrics
        await asyncio.sleep(0.01)
        daemon.buffer.emit(Reading("fw-1", "custom:fw.sessions", (), int(daemon.clock() * 1000),
                                   1.0))

        def delivered_reported() -> bool:
            return any(p.device == "collector-1" and p.metric ==
                       "custom:dtcollector.points.delivered" and p.value >= 1
                       for p in simulator.points())

        await wait_for(delivered_reported, timeout=20, what="self-monitoring points")
    device = simulator.devices["collector-1"]
    assert device.type == "dt-collector"
    received = [p.value for p in simulator.points() if p.device == "collector-1"
                and p.metric == "custom:dtcollector.points.received"]
    assert received and received[0] == 1.0


async def test_metrics_count_readings_per_source(simulator: Simulator) -> None:
    import tests.fakesource  # noqa: F401  registers type: fake

    port = free_port()
    text = (base_config(simulator.url).replace("  listen: ''", f"  listen: 127.0.0.1:{port}")
            + METRICS + "sources:\n"
            "  - {type: fake, name: fw-feed, device: fw-1, device_type: F5-Firewall,\n"
            "     metric: custom:fw.sessions, count: 3, interval: 0.01}\n")
    async with running_daemon(parse_config(text, env={})) as daemon:
        await wait_for(lambda: daemon.buffer.received == 3, what="3 readings")
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{port}/metrics") as answer:
            m = prometheus(await answer.text())
    assert m['dtcollector_readings_received_total{source="fw-feed"}'] == 3
