"""MQTT ingest: messages per second from a real mosquitto into the buffer.

The same number of JSON messages (two metrics and a timestamp, 500 devices) is queued at a
mosquitto for a persistent session, then drained by (a) the collector's MQTT source into
the real buffer, (b) a bare aiomqtt + json receive loop and (c) `mosquitto_sub` (C).
Rounds alternate, so a noisy neighbour hurts all three alike.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import aiomqtt

from bench.common import Row, free_port
from collector.buffer import Buffer
from collector.catalog import Catalog, MetricInfo
from collector.config import parse_config
from collector.model import Device, Reading
from collector.sources import SourceContext, create_source
from collector.telemetry import Telemetry

MESSAGES = 30_000
DEVICES = 500
ROUNDS = 3


async def start_broker(directory: Path) -> tuple[asyncio.subprocess.Process, int]:
    port = free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                    "max_queued_messages 0\nmax_inflight_messages 0\n"
                    + ("user root\n" if os.geteuid() == 0 else ""))
    proc = await asyncio.create_subprocess_exec("mosquitto", "-c", str(conf),
                                                stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return proc, port
        except OSError:
            await asyncio.sleep(0.02)
    raise RuntimeError("mosquitto did not start")


def payloads(n: int = MESSAGES) -> list[tuple[str, bytes]]:
    now = int(time.time() * 1000)
    return [(f"d{i % DEVICES}", json.dumps({"ts": now - n + i, "temperature": 20 + i % 10,
                                            "humidity": 400 + i % 100}).encode())
            for i in range(n)]


async def queue_messages(port: int, client_id: str, root: str) -> None:
    """Make a persistent session subscribed to root/+/state, then queue MESSAGES for it."""
    async with aiomqtt.Client("127.0.0.1", port, identifier=client_id,
                              clean_session=False) as client:
        await client.subscribe(f"{root}/+/state", qos=1)
    async with aiomqtt.Client("127.0.0.1", port) as publisher:
        for device, payload in payloads():
            await publisher.publish(f"{root}/{device}/state", payload, qos=1)


async def bare_loop(port: int, client_id: str, root: str) -> float:
    started, n = time.perf_counter(), 0
    async with aiomqtt.Client("127.0.0.1", port, identifier=client_id,
                              clean_session=False) as client:
        await client.subscribe(f"{root}/+/state", qos=1)
        async for message in client.messages:
            body = json.loads(message.payload)
            _ = (body["ts"], body["temperature"], body["humidity"])
            n += 1
            if n == MESSAGES:
                return MESSAGES / (time.perf_counter() - started)
    raise AssertionError("unreachable")


async def mosquitto_sub(port: int, client_id: str, root: str) -> float:
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-i", client_id, "-c", "-q", "1",
        "-t", f"{root}/+/state", "-C", str(MESSAGES), stdout=asyncio.subprocess.DEVNULL)
    await proc.wait()
    assert proc.returncode == 0
    return MESSAGES / (time.perf_counter() - started)


class CountingSink:
    """The buffer, and an event set once it has received `expected` readings."""

    def __init__(self, buffer: Buffer, expected: int) -> None:
        self.buffer, self.expected, self.done = buffer, expected, asyncio.Event()

    def declare_device(self, device: Device) -> None:
        self.buffer.declare_device(device)

    def emit(self, reading: Reading) -> None:
        self.buffer.emit(reading)
        if self.buffer.received == self.expected:
            self.done.set()


MQTT_CONFIG = """
dynatrace: {{url: http://127.0.0.1:9, token: x}}
metrics:
  custom:bench.temperature: {{display_name: T, types: [Sensor]}}
  custom:bench.humidity: {{display_name: H, types: [Sensor]}}
sources:
  - type: mqtt
    url: mqtt://127.0.0.1:{port}
    client_id: {client_id}
    max_queued_messages: {queue}
    subscriptions:
      - topic: {root}/{{device}}/state
        device: {{type: Sensor}}
        timestamp: {{field: ts, format: ms}}
        metrics:
          - {{field: temperature, metric: custom:bench.temperature}}
          - {{field: humidity, metric: custom:bench.humidity, scale: 0.1}}
"""


def bench_catalog() -> Catalog:
    catalog = Catalog()
    for metric in ("custom:bench.temperature", "custom:bench.humidity"):
        catalog.set_metric(MetricInfo(metric, frozenset(), frozenset({"Sensor"})))
    return catalog


async def collector(port: int, client_id: str, root: str) -> float:
    config = parse_config(MQTT_CONFIG.format(port=port, client_id=client_id, root=root,
                                             queue=MESSAGES), env={})
    buffer = Buffer(bench_catalog(), max_points=4 * MESSAGES, max_age=3600)
    sink = CountingSink(buffer, 2 * MESSAGES)
    source = create_source(config.sources[0], SourceContext(sink, Telemetry()))
    started = time.perf_counter()
    task = asyncio.create_task(source.run())
    try:
        await sink.done.wait()
        rate = MESSAGES / (time.perf_counter() - started)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert buffer.buffered == 2 * MESSAGES, (buffer.buffered, buffer.invalid_causes)
    return rate


async def mqtt_ingest() -> list[Row]:
    rates: dict[str, list[float]] = {"bare": [], "collector": [], "sub": []}
    runners = {"bare": bare_loop, "collector": collector, "sub": mosquitto_sub}
    with tempfile.TemporaryDirectory() as directory:
        proc, port = await start_broker(Path(directory))
        try:
            for r in range(ROUNDS):
                for kind, run in runners.items():
                    root, client_id = f"bench/{kind}{r}", f"bench-{kind}-{r}"
                    await queue_messages(port, client_id, root)
                    rates[kind].append(await run(port, client_id, root))
        finally:
            proc.terminate()
            await proc.wait()
    note = (f"{MESSAGES:,} JSON messages (2 metrics + ts, {DEVICES} devices) queued for a "
            f"persistent session; median of {ROUNDS}")
    mine = statistics.median(rates["collector"])
    return [
        Row("MQTT ingest vs bare aiomqtt+json", "messages/s", mine,
            statistics.median(rates["bare"]), "bare aiomqtt + json receive loop",
            "ratio >= 0.9", True, note),
        Row("MQTT ingest vs mosquitto_sub", "messages/s", mine,
            statistics.median(rates["sub"]), "mosquitto_sub, C, draining the same", "-",
            True, "the gap we intend to close over time"),
    ]
