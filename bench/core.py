"""Buffer memory per point, and flush throughput against a bare aiohttp loop."""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
import tracemalloc
from array import array

import aiohttp

from bench.common import BENCH_TOKEN, Row, Timer, reset_simulator, simulator_process
from collector.buffer import Buffer
from collector.catalog import Catalog, MetricInfo
from collector.config import parse_config
from collector.dynatrace import DynatraceClient
from collector.flush import BodyEncoder, Flusher
from collector.model import Device, Reading
from collector.registration import register_metrics
from collector.telemetry import Telemetry

POINTS = 1_000_000


def memory_per_point() -> Row:
    """tracemalloc delta of 1,000,000 buffered points (1,000 devices x 20 series x 50)."""
    catalog = Catalog()
    catalog.set_metric(MetricInfo("custom:bench", frozenset({"if"}), frozenset({"Bench"})))
    now = time.time()
    ts0 = int(now * 1000) - 60_000
    readings_per_series = POINTS // (1000 * 20)

    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    timestamps, values = array("q"), array("d")
    for i in range(POINTS):
        timestamps.append(ts0 + i)
        values.append(float(i))
    raw = (tracemalloc.get_traced_memory()[0] - base) / POINTS
    del timestamps, values
    gc.collect()

    buffer = Buffer(catalog, max_points=POINTS, max_age=3600, clock=lambda: now)
    keys = []
    for d in range(1000):
        buffer.declare_device(Device(f"dev-{d}", "Bench"))
        keys += [(f"dev-{d}", (("if", f"if{s}"),)) for s in range(20)]
    gc.collect()
    base = tracemalloc.get_traced_memory()[0]
    for k in range(readings_per_series):
        for device, dims in keys:
            buffer.emit(Reading(device, "custom:bench", dims, ts0 + k, float(k)))
    used = (tracemalloc.get_traced_memory()[0] - base) / POINTS
    tracemalloc.stop()
    assert buffer.buffered == POINTS, buffer.dropped
    return Row("buffer memory at 1M points", "bytes/point, tracemalloc", used, raw,
               "two typed arrays: the raw 16 B floor", "value <= 40", False,
               "incl. series objects and arrival log")


DEVICES, SERIES, PER_SERIES = 1000, 20, 6


def fill(buffer: Buffer, ts_end: int) -> None:
    for d in range(DEVICES):
        for s in range(SERIES):
            dims = (("if", f"if{s}"),)
            for k in range(PER_SERIES):
                buffer.emit(Reading(f"dev-{d}", "custom:bench", dims, ts_end - k, float(k)))


async def flush_throughput(rounds: int = 3) -> Row:
    text = ("dynatrace:\n  url: {url}\n  token: " + BENCH_TOKEN + "\n"
            "metrics:\n  custom:bench:\n    display_name: Bench\n    dimensions: [if]\n"
            "    types: [Bench]\n")
    collector_pps: list[float] = []
    baseline_pps: list[float] = []
    points = DEVICES * SERIES * PER_SERIES
    async with simulator_process() as url:
        config = parse_config(text.replace("{url}", url), env={})
        dt = config.dynatrace
        async with DynatraceClient(dt, dt.api_token()) as client:
            catalog, telemetry = Catalog(), Telemetry()
            await register_metrics(client, config.all_metrics(), catalog, telemetry)
            await asyncio.sleep(0.05)  # points must be younger than the registration
            for r in range(rounds):
                await reset_simulator(url)
                buffer = Buffer(catalog, max_points=10 * points, max_age=3600)
                for d in range(DEVICES):
                    buffer.declare_device(Device(f"dev-{d}", "Bench"))
                fill(buffer, int(time.time() * 1000) - 10 * r)
                flusher = Flusher(buffer, client, config.buffer,
                                  max_request_bytes=dt.max_request_bytes,
                                  max_concurrency=dt.max_concurrency, telemetry=telemetry)
                with Timer() as t:
                    await flusher.flush()
                assert buffer.delivered == points, (buffer.dropped, flusher.last_result)
                collector_pps.append(points / t.wall)

                # Baseline: the same bodies, encoded beforehand, posted by a bare loop.
                await reset_simulator(url)
                buffer = Buffer(catalog, max_points=10 * points, max_age=3600)
                for d in range(DEVICES):
                    buffer.declare_device(Device(f"dev-{d}", "Bench"))
                fill(buffer, int(time.time() * 1000) - 10 * r - 5)
                encoder = BodyEncoder(dt.max_request_bytes)
                bodies = []
                for d in range(DEVICES):
                    batch = buffer.take(f"dev-{d}")
                    assert batch is not None
                    bodies += [(batch.device.id, b.data)
                               for b in encoder.bodies(batch.device, batch.pieces, True)]
                with Timer() as t:
                    await bare_post(url, bodies, dt.max_concurrency)
                baseline_pps.append(points / t.wall)
    return Row("flush 1,000 dev x 20 series x 6 pts", "points/s", statistics.median(
        collector_pps), statistics.median(baseline_pps), "bare aiohttp, pre-encoded bodies",
        "ratio >= 0.7", True, f"median of {rounds}; simulator in its own process")


async def bare_post(url: str, bodies: list[tuple[str, bytes]], concurrency: int) -> None:
    headers = {"Authorization": f"Api-Token {BENCH_TOKEN}", "Content-Type": "application/json"}
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    for item in bodies:
        queue.put_nowait(item)
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency)) as http:

        async def worker() -> None:
            while not queue.empty():
                device, body = queue.get_nowait()
                async with http.post(f"{url}/api/v1/entity/infrastructure/custom/{device}",
                                     data=body, headers=headers) as answer:
                    await answer.read()
                    assert answer.status == 200, await answer.text()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
