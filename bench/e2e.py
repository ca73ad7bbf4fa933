"""End to end: CPU per data point from an MQTT message to an accepted request.

The same JSON messages (two metrics, 500 devices, stamped on arrival) wait at a real
mosquitto for a persistent session. The collector (the daemon: MQTT source, buffer, flush
every second, Dynatrace client) and a baseline drain them into the project's simulator,
which runs in its own process; the CPU of this process is measured from the start until the
simulator has accepted every point. Rounds alternate, so a noisy neighbour hurts both alike.

The baseline is the least a hand-written pipeline must do for the same result: aiomqtt
receive, orjson parse, two floats appended to per-device lists, and every second one
orjson-encoded custom device body per device posted by aiohttp (device type on the first
push only). It has no limits, no accounting, no retries, no body splitting and no checks.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import aiomqtt
import orjson

from bench.common import BENCH_TOKEN, Row, reset_simulator, simulator_process
from bench.mqtt import start_broker
from collector.config import parse_config
from collector.daemon import Daemon

MESSAGES = 20_000
DEVICES = 500
POINTS = 2 * MESSAGES
ROUNDS = 2
FLUSH_S = 1.0
METRICS = {"custom:bench.temperature": "T", "custom:bench.humidity": "H"}

CONFIG = """
dynatrace: {{url: "{url}", token: {token}}}
buffer: {{flush_interval: {flush}s}}
health: {{listen: ''}}
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
        metrics:
          - {{field: temperature, metric: custom:bench.temperature}}
          - {{field: humidity, metric: custom:bench.humidity, scale: 0.1}}
"""


async def queue_messages(port: int, client_id: str, root: str) -> None:
    """A persistent session subscribed to root/+/state, and MESSAGES queued for it."""
    async with aiomqtt.Client("127.0.0.1", port, identifier=client_id,
                              clean_session=False) as client:
        await client.subscribe(f"{root}/+/state", qos=1)
    async with aiomqtt.Client("127.0.0.1", port) as publisher:
        for i in range(MESSAGES):
            payload = orjson.dumps({"temperature": 20 + i % 10, "humidity": 400 + i % 100})
            await publisher.publish(f"{root}/d{i % DEVICES}/state", payload, qos=1)


async def accepted(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(f"{url}/_simulator/stats") as answer:
        points: int = (await answer.json())["points"]
        return points


async def until_accepted(url: str, started: float) -> float:
    """CPU seconds since `started` when the simulator has every point."""
    async with aiohttp.ClientSession() as http:
        for _ in range(1200):  # the simulator is another process: ask it, every 50 ms
            if await accepted(http, url) >= POINTS:
                return time.process_time() - started
            await asyncio.sleep(0.05)
    raise AssertionError("the simulator did not get every point within a minute")


async def collector(url: str, port: int, client_id: str, root: str) -> float:
    config = parse_config(CONFIG.format(url=url, token=BENCH_TOKEN, flush=FLUSH_S, port=port,
                                        client_id=client_id, root=root, queue=MESSAGES),
                          env={})
    daemon = Daemon(config)
    task = asyncio.create_task(daemon.run())
    try:
        await daemon.registered.wait()  # registration is start-up, not per point
        return await until_accepted(url, time.process_time())
    finally:
        daemon.stop()
        await task


async def baseline(url: str, port: int, client_id: str, root: str) -> float:
    headers = {"Authorization": f"Api-Token {BENCH_TOKEN}",
               "Content-Type": "application/json; charset=utf-8"}
    async with aiohttp.ClientSession(headers=headers) as http:
        for metric, name in METRICS.items():  # start-up, as the collector's registration
            async with http.put(f"{url}/api/v1/timeseries/{metric}", data=orjson.dumps(
                    {"displayName": name, "types": ["Sensor"]})) as answer:
                assert answer.status in (200, 201), await answer.text()
        started = time.process_time()
        points: dict[str, tuple[list[list[float]], list[list[float]]]] = {}
        typed: set[str] = set()

        async def push(device: str, temperature: list[list[float]],
                       humidity: list[list[float]]) -> None:
            body: dict[str, object] = {"series": [
                {"timeseriesId": "custom:bench.temperature", "dataPoints": temperature},
                {"timeseriesId": "custom:bench.humidity", "dataPoints": humidity}]}
            if device not in typed:
                body["type"] = "Sensor"
            async with http.post(f"{url}/api/v1/entity/infrastructure/custom/{device}",
                                 data=orjson.dumps(body)) as answer:
                assert answer.status == 200, await answer.text()
            typed.add(device)

        async def flush() -> None:
            nonlocal points
            taken, points = points, {}
            await asyncio.gather(*(push(d, t, h) for d, (t, h) in taken.items()))

        async def flush_every_second() -> None:
            while True:
                await asyncio.sleep(FLUSH_S)
                await flush()

        flusher = asyncio.create_task(flush_every_second())
        async with aiomqtt.Client("127.0.0.1", port, identifier=client_id,
                                  clean_session=False) as client:
            await client.subscribe(f"{root}/+/state", qos=1)
            received = 0
            async for message in client.messages:
                device = message.topic.value.rsplit("/", 2)[1]
                body = orjson.loads(message.payload)
                now = int(time.time() * 1000)
                series = points.get(device) or points.setdefault(device, ([], []))
                series[0].append([now, float(body["temperature"])])
                series[1].append([now, float(body["humidity"]) * 0.1])
                received += 1
                if received == MESSAGES:
                    break
        used = await until_accepted(url, started)
        flusher.cancel()
        return used


async def end_to_end() -> list[Row]:
    used: dict[str, list[float]] = {"collector": [], "baseline": []}
    runners = {"collector": collector, "baseline": baseline}
    with tempfile.TemporaryDirectory() as directory:
        proc, port = await start_broker(Path(directory))
        try:
            async with simulator_process() as url:
                for r in range(ROUNDS):
                    for kind, run in runners.items():
                        root, client_id = f"bench/e2e-{kind}{r}", f"bench-e2e-{kind}-{r}"
                        await queue_messages(port, client_id, root)
                        await reset_simulator(url)
                        used[kind].append(await run(url, port, client_id, root))
        finally:
            proc.terminate()
            await proc.wait()
    per_point = {k: statistics.median(v) / POINTS * 1e6 for k, v in used.items()}
    return [Row("end to end, MQTT -> accepted by simulator", "CPU us per data point",
                per_point["collector"], per_point["baseline"],
                "hand-written aiomqtt+orjson+aiohttp pipeline", "-", False,
                f"{MESSAGES:,} messages x 2 metrics, {DEVICES} devices, flush every "
                f"{FLUSH_S:.0f} s; median of {ROUNDS}; simulator in its own process")]
